"""The API docs page in a real Chromium, offline: Swagger UI comes from the portal, not a CDN.

The page runs against a live portal (daphne) with every request that is not to
127.0.0.1 aborted, as on a machine without internet; it must still list the
`/v1` operations and one signed operation per pipeline, with the `data` the
pipeline declares. Screenshots go to test-artifacts/docs/ (git-ignored).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.browser import Pages
from tests.portal_process import PortalProcess, start_portal
from tests.processes import REPO_ROOT

pytest_plugins = ["tests.browser_fixtures"]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "docs"
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

OPERATIONS = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
    "/api/chat",
    "/api/embedding",
    "/api/echo",
}


@pytest.fixture
def portal(chromium: Any) -> Iterator[PortalProcess]:
    with start_portal() as process:
        yield process


def test_the_docs_page_lists_every_operation_with_the_internet_cut_off(
    portal: PortalProcess, pages: Pages
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    outside: list[str] = []
    served: list[str] = []

    def loopback_only(route) -> None:
        url = route.request.url
        if urlsplit(url).hostname == "127.0.0.1":
            served.append(url)
            route.continue_()
        else:
            outside.append(url)
            route.abort()

    page = pages.open(1280, 1600)
    page.route("**/*", loopback_only)

    page.goto(f"{portal.url}/api/docs/")
    page.locator(".opblock-summary-path").first.wait_for(timeout=30_000)
    paths = "els => els.map(e => e.dataset.path)"
    listed = set(page.eval_on_selector_all(".opblock-summary-path", paths))
    page.screenshot(path=str(ARTIFACTS / "1-operations.png"), full_page=True)

    # The chat operation's request body: the envelope around the example the pipeline declares.
    page.locator("#operations-signed-signed_chat .opblock-summary").click()
    body = page.locator("#operations-signed-signed_chat .opblock-body")
    body.locator(".body-param__example, .microlight").first.wait_for(timeout=10_000)
    example = body.inner_text()
    page.screenshot(path=str(ARTIFACTS / "2-signed-chat.png"), full_page=True)

    assert listed >= OPERATIONS, f"missing: {OPERATIONS - listed}"
    assert '"What is the capital of France?"' in example
    assert '"signType"' in example
    assert outside == [], f"the page asked for something outside the portal: {outside}"
    assert any("/static/drf_spectacular_sidecar/swagger-ui-dist/" in url for url in served)
    assert pages.errors == [], f"JavaScript errors on the page: {pages.errors}"

    # A /v1 operation: its summary, and "Try it out" starts from an example that works as it is.
    chat = page.locator("#operations-v1-create_chat_completion")
    assert "Answer a conversation" in chat.locator(".opblock-summary").inner_text()
    chat.locator(".opblock-summary").click()
    chat.locator(".try-out__btn").click()
    editor = chat.locator("textarea.body-param__text")
    editor.wait_for(timeout=10_000)
    tried = editor.input_value()
    assert '"smollm2-135m-instruct"' in tried
    assert "Say hello in French." in tried
    assert "9223372036854776000" not in tried
    for width, height in ((1400, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        editor.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / f"3-chat-example-{width}.png"))
    assert pages.errors == [], f"JavaScript errors on the page: {pages.errors}"
