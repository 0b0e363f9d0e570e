"""The chat page in a real Chromium against a live portal (daphne) and a live SmolLM2 worker.

Logs in, watches tokens arrive before the answer ends, stops a long answer, reloads and
finds the conversation; checks that model Markdown cannot inject HTML; asks for an answer
that follows a JSON schema. Screenshots go to test-artifacts/chat/ (git-ignored).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from portal.chat.models import AnswerFormat, AnswerStatus, Message
from registry.models import Worker
from tests.browser import PASSWORD, Pages, log_in_to_chat, outside_the_event_loop
from tests.portal_process import PortalProcess, start_portal
from tests.processes import REPO_ROOT, WorkerProcess, start_worker, wait_for

pytest_plugins = ["tests.browser_fixtures"]
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ARTIFACTS = REPO_ROOT / "test-artifacts" / "chat"
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def smollm2(django_db_setup: None, chromium: Any) -> Iterator[WorkerProcess]:
    """One SmolLM2 worker for the module (started once Chromium is known to be there).

    Each test's flush deletes its row; its next heartbeat registers it again.
    """
    with start_worker(
        "--model-path", "smollm2-135m-instruct", "--model-names", "smollm2", "--heartbeat-interval", "1",
        timeout=240,
    ) as worker:  # fmt: skip
        yield worker


@pytest.fixture(scope="module")
def live_portal(smollm2: WorkerProcess) -> Iterator[PortalProcess]:
    with start_portal(extra_env={"WORKER_CACHE_SECONDS": "0.2"}) as process:
        yield process


@pytest.fixture
def portal(live_portal: PortalProcess, smollm2: WorkerProcess) -> PortalProcess:
    """The module's portal, with this test's user and the worker registered in this test's database."""
    get_user_model().objects.create_user("ada", password=PASSWORD)
    assert wait_for(lambda: Worker.objects.online().filter(address=smollm2.address).exists(), timeout=30)
    return live_portal


@pytest.fixture
def page(portal: PortalProcess, pages: Pages) -> object:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return pages.open()


def log_in(page, base: str) -> None:
    log_in_to_chat(page, base)
    page.wait_for_function("document.querySelector('#model').value === 'smollm2'", timeout=20_000)


def test_chat_streams_stops_and_resumes_in_a_real_browser(page, portal):
    log_in(page, portal.url)
    page.screenshot(path=str(ARTIFACTS / "1-empty.png"))

    page.click("#toggle-settings")
    # Greedy: at the page's default 0.7 the long answer below is sometimes a few words, which
    # ends before it can be stopped.
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "32")
    page.fill("#prompt", "Name three colours.")
    page.press("#prompt", "Enter")
    answer = page.locator(".msg.assistant").last
    # Text appears while the answer is still streaming (the cursor class is still on).
    page.wait_for_function(
        "() => { const m = [...document.querySelectorAll('.msg.assistant')].pop();"
        " return m && m.classList.contains('streaming')"
        " && m.querySelector('.bubble').textContent.length > 0; }",
        timeout=60_000,
    )
    page.screenshot(path=str(ARTIFACTS / "2-streaming.png"))
    answer.locator(".figures span").first.wait_for(timeout=60_000)
    figures = answer.locator(".figures").inner_text()
    assert "tokens" in figures
    assert "TTFT" in figures
    assert "tok/s" in figures
    assert "smollm2" in figures
    assert "/chat/c/" in page.url

    page.fill("#max-tokens", "400")
    page.fill("#prompt", "Write a long story about a dragon who learns to cook.")
    page.press("#prompt", "Enter")
    long_answer = page.locator(".msg.assistant").last
    page.wait_for_function(
        "() => [...document.querySelectorAll('.msg.assistant')].pop()"
        ".querySelector('.bubble').textContent.split(' ').length > 5",
        timeout=60_000,
    )
    started = time.monotonic()
    page.click("#stop")
    long_answer.locator(".figures .stopped").wait_for(timeout=10_000)
    assert time.monotonic() - started < 10
    partial = long_answer.locator(".bubble").inner_text()
    assert partial
    page.screenshot(path=str(ARTIFACTS / "3-stopped.png"))

    stored = outside_the_event_loop(
        lambda: list(Message.objects.filter(role="assistant").order_by("created_at", "id"))
    )
    assert [m.status for m in stored] == [AnswerStatus.COMPLETE, AnswerStatus.STOPPED]
    assert 0 < (stored[1].completion_tokens or 0) < 400

    page.reload()
    page.locator(".conversations li.active").wait_for()
    assert "Name three colours." in page.locator(".conversations li.active").inner_text()
    assert page.locator(".msg.assistant").count() == 2
    assert page.locator(".msg.assistant .figures .stopped").count() == 1
    page.screenshot(path=str(ARTIFACTS / "4-reloaded.png"))


def test_model_markdown_cannot_inject_html(page, portal):
    log_in(page, portal.url)
    html = page.evaluate(
        """() => {
            const box = document.createElement('div');
            box.innerHTML = SafeMarkdown.render(
              '**bold** <script>window.pwned=1</script> <img src=x onerror="window.pwned=1">\\n' +
              '[x](javascript:window.pwned=1)\\n```html\\n<b>code</b>\\n```');
            document.body.appendChild(box);
            return box.innerHTML;
        }"""
    )
    assert "<strong>bold</strong>" in html
    assert "<script" not in html
    assert "<img" not in html
    assert 'href="javascript' not in html
    assert "&lt;b&gt;code&lt;/b&gt;" in html
    assert page.evaluate("window.pwned") is None


def test_a_json_schema_answer_follows_the_schema_and_shows_as_text(page, portal):
    log_in(page, portal.url)
    page.click("#toggle-settings")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "48")
    page.select_option("#answer-format", "json_schema")
    page.fill("#json-schema", '{"type": "object",')  # a schema that is not JSON is refused, naming it
    page.fill("#prompt", "What is the capital of France?")
    page.press("#prompt", "Enter")
    refusal = page.locator(".msg.assistant .error-box").last
    refusal.wait_for(timeout=10_000)
    assert "response_format.json_schema.schema" in refusal.inner_text()

    page.fill("#json-schema", json.dumps(CITY))
    # Not asked for JSON in words: unconstrained, SmolLM2 answers "The capital of France is Paris."
    page.fill("#prompt", "What is the capital of France?")
    page.press("#prompt", "Enter")
    answer = page.locator(".msg.assistant").last
    answer.locator(".figures span").first.wait_for(timeout=90_000)
    page.screenshot(path=str(ARTIFACTS / "5-json-schema.png"))
    assert answer.locator(".error-box").count() == 0, answer.locator(".error-box").inner_text()
    assert answer.locator(".bubble > *").count() == 1  # one <pre>: text, not rendered Markdown
    shown = answer.locator(".bubble pre.json").inner_text()
    assert isinstance(json.loads(shown)["city"], str), shown

    stored = outside_the_event_loop(lambda: Message.objects.get(role="assistant"))
    assert (stored.answer_format, json.loads(stored.content)) == (AnswerFormat.JSON, json.loads(shown))
    page.reload()  # the answer, the answer format and the schema come back
    page.locator(".msg.assistant .bubble pre.json").wait_for()
    assert json.loads(page.locator(".msg.assistant .bubble pre.json").inner_text()) == json.loads(shown)
    assert page.input_value("#answer-format") == "json_schema"
    assert json.loads(page.input_value("#json-schema")) == CITY
