"""The chat and arena pages in a real Chromium, fed hostile text: nothing runs, everything shows as text.

Two sources. End to end: a loopback OpenAI-compatible endpoint, registered as a
remote worker, streams markup as content and a string as `usage.completion_tokens`
through a live portal. Alone: the page's websocket is mocked (Playwright's
`route_web_socket`), so the page's own rendering meets hostile messages whatever
the gateway does to them first.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from registry.models import ServedModel, Worker, WorkerKind, WorkerStatus
from tests.browser import PASSWORD, Pages, log_in_to_chat
from tests.portal_process import PortalProcess, start_portal

pytest_plugins = ["tests.browser_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

IMG = "<img src=x onerror=window.__pwned=1>"
SCRIPT = "<script>window.__pwned=1</script>"
# Elements that would mean hostile text became markup.
INJECTED = "img, script, iframe, svg, object, embed"


class HostileUpstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint whose content is markup and whose usage figures are strings."""

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        models = {"object": "list", "data": [{"id": "hostile-a"}, {"id": "hostile-b"}]}
        self._send(200, json.dumps(models).encode(), "application/json")

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        usage = {"prompt_tokens": 3, "completion_tokens": IMG, "total_tokens": IMG}
        base = {"id": "chatcmpl-hostile", "object": "chat.completion.chunk", "model": request["model"]}
        events = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Look: "}}]},
            {**base, "choices": [{"index": 0, "delta": {"content": SCRIPT}}]},
            {**base, "choices": [{"index": 0, "delta": {"content": "\n\nand " + IMG}}]},
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {**base, "choices": [], "usage": usage},
        ]
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self._send(200, body.encode(), "text/event-stream")


@pytest.fixture(scope="module")
def upstream(chromium: Any) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HostileUpstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def live_portal(django_db_setup: None, upstream: str) -> Iterator[PortalProcess]:
    with start_portal(extra_env={"WORKER_CACHE_SECONDS": "0.2"}) as process:
        yield process


@pytest.fixture
def portal(live_portal: PortalProcess, upstream: str) -> PortalProcess:
    """The module's portal, with this test's user and the upstream registered as a remote worker."""
    get_user_model().objects.create_user("ada", password=PASSWORD)
    worker = Worker.objects.create(
        identity="hostile-remote",
        kind=WorkerKind.REMOTE,
        address=upstream,
        status=WorkerStatus.ONLINE,
        last_heartbeat=timezone.now(),
        expires_at=timezone.now() + timedelta(hours=1),
        max_concurrency=4,
        max_queue=4,
    )
    for name in ("hostile-a", "hostile-b"):
        worker.served_models.add(ServedModel.objects.create(name=name))
    return live_portal


@pytest.fixture
def page(portal: PortalProcess, pages: Pages) -> Any:
    page = pages.open()
    log_in_to_chat(page, portal.url)
    return page


def assert_nothing_ran(page: Any, region: str) -> None:
    assert page.locator(region).locator(INJECTED).count() == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"


def wait_for_models(page: Any, select: str) -> None:
    page.wait_for_function(f"document.querySelector('{select}').options.length > 1", timeout=20_000)


def test_chat_page_shows_a_hostile_upstream_as_text_end_to_end(page, portal):
    wait_for_models(page, "#model")
    page.select_option("#model", "hostile-a")
    page.fill("#prompt", "Show me some markup.")
    page.press("#prompt", "Enter")
    answer = page.locator(".msg.assistant").last
    answer.locator(".figures span, .error-box").first.wait_for(timeout=30_000)

    assert SCRIPT in answer.locator(".bubble").inner_text()
    assert IMG in answer.locator(".bubble").inner_text()
    assert "onerror" not in answer.locator(".figures").inner_text()
    assert_nothing_ran(page, "#messages")

    page.reload()  # the stored conversation renders through the same path
    page.locator(".msg.assistant .bubble").first.wait_for()
    assert IMG in page.locator(".msg.assistant .bubble").first.inner_text()
    assert_nothing_ran(page, "#messages")


def test_arena_shows_a_hostile_upstream_as_text_end_to_end(page, portal):
    page.goto(f"{portal.url}/chat/arena/")
    wait_for_models(page, "#model-a")
    page.check("input[name=mode][value=named]")
    page.select_option("#model-a", "hostile-a")
    page.select_option("#model-b", "hostile-b")
    page.fill("#prompt", "Show me some markup.")
    page.click("#send")
    page.locator("#vote-bar.open").wait_for(timeout=30_000)

    for side in ("a", "b"):
        assert SCRIPT in page.locator(f"#answer-{side}").inner_text()
        assert "onerror" not in page.locator(f"#figures-{side}").inner_text()
    assert_nothing_ran(page, ".arena")


Replies = dict[str, list[dict[str, Any]]]


def mock_socket(page: Any, models: list[str], replies: Replies) -> list[dict[str, Any]]:
    """Answer the page's websocket ourselves: `models.list` on connect, then `replies[type]` per message.

    Return the list that collects what the page sends.
    """
    sent: list[dict[str, Any]] = []

    def handler(ws: Any) -> None:
        ws.send(json.dumps({"type": "models.list", "models": models}))

        def on_message(message: str | bytes) -> None:
            sent.append(json.loads(message))
            for reply in replies.get(sent[-1]["type"], []):
                ws.send(json.dumps(reply))

        ws.on_message(on_message)

    page.route_web_socket(re.compile(r"/ws/chat/$"), handler)
    return sent


HOSTILE_FIGURES = {
    "completion_tokens": IMG,
    "time_to_first_token_ms": IMG,
    "tokens_per_second": "1e999",
    "model_name": IMG,
    "worker_identity": SCRIPT,
}


def test_chat_page_renders_hostile_messages_as_text_by_itself(page, portal):
    done = {"role": "assistant", "content": SCRIPT + "\n\n" + IMG, "status": "complete", **HOSTILE_FIGURES}
    mock_socket(
        page,
        ["hostile-a", IMG],
        {
            "chat.send": [
                {"type": "chat.started", "conversation_id": 7, "title": IMG},
                {"type": "chat.token", "text": SCRIPT},
                {"type": "chat.token", "text": IMG},
                {"type": "chat.done", "message": done},
            ]
        },
    )
    page.goto(f"{portal.url}/chat/")
    wait_for_models(page, "#model")
    page.fill("#prompt", "Hello")
    page.press("#prompt", "Enter")
    answer = page.locator(".msg.assistant").last
    answer.locator(".figures span").first.wait_for(timeout=10_000)

    assert_nothing_ran(page, "body > .layout")
    figures = answer.locator(".figures").inner_text()
    assert IMG in figures  # the model's name, as text
    assert SCRIPT in figures  # the worker's
    for figure in ("tokens", "TTFT", "tok/s"):
        assert figure not in figures
    assert IMG in answer.locator(".bubble").inner_text()
    assert IMG in page.locator("#conversations li.active").inner_text()
    assert IMG in page.eval_on_selector("#model", "s => [...s.options].map((o) => o.textContent).join()")


def test_a_json_answer_is_sent_as_response_format_and_shown_as_plain_text(page, portal):
    json_answer = json.dumps({"city": IMG, "note": "**not bold** " + SCRIPT})
    done = {"role": "assistant", "content": json_answer, "answer_format": "json", "completion_tokens": 9}
    replies: list[dict[str, Any]] = [
        {"type": "chat.token", "text": part} for part in (json_answer[:20], json_answer[20:])
    ]
    replies.append({"type": "chat.done", "message": {**done, "status": "complete"}})
    sent = mock_socket(page, ["hostile-a", "hostile-b"], {"chat.send": replies})
    page.goto(f"{portal.url}/chat/")
    wait_for_models(page, "#model")
    page.click("#toggle-settings")
    assert page.locator("#json-schema").is_hidden()
    page.select_option("#answer-format", "json_schema")
    page.fill("#json-schema", '{"type": "object"}')
    page.fill("#prompt", "Hello")
    page.press("#prompt", "Enter")
    answer = page.locator(".msg.assistant").last
    answer.locator(".figures span").first.wait_for(timeout=10_000)

    schema = {"name": "answer", "schema": '{"type": "object"}', "strict": True}
    assert sent[-1]["params"]["response_format"] == {"type": "json_schema", "json_schema": schema}
    assert_nothing_ran(page, "body > .layout")
    assert answer.locator(".bubble > *").count() == 1  # one <pre>, its text the answer as sent
    assert answer.locator(".bubble pre.json").inner_text() == json_answer
    assert answer.locator(".bubble strong").count() == 0


def test_arena_renders_hostile_messages_as_text_by_itself(page, portal):
    side_a = {"type": "arena.done", "side": "a", "status": "complete", **HOSTILE_FIGURES}
    side_b = {"type": "arena.done", "side": "b", "status": "error", "error": IMG, "completion_tokens": "7"}
    mock_socket(
        page,
        ["hostile-a", "hostile-b"],
        {
            "arena.send": [
                {
                    "type": "arena.started",
                    "battle_id": 3,
                    "anonymous": False,
                    "model_a": IMG,
                    "model_b": SCRIPT,
                },
                {"type": "arena.token", "side": "a", "text": SCRIPT},
                {"type": "arena.token", "side": "b", "text": IMG},
                {"type": "arena.token", "side": IMG, "text": IMG},
                side_a,
                side_b,
                {"type": "arena.finished"},
            ],
            "arena.vote": [{"type": "arena.revealed", "model_a": IMG, "model_b": SCRIPT, "choice": "a"}],
        },
    )
    page.goto(f"{portal.url}/chat/arena/")
    wait_for_models(page, "#model-a")
    page.fill("#prompt", "Hello")
    page.click("#send")
    page.locator("#vote-bar.open").wait_for(timeout=10_000)
    page.click("#vote-bar [data-choice=a]")
    page.locator("#side-a.winner").wait_for(timeout=10_000)

    assert_nothing_ran(page, ".arena")
    figures_a = page.locator("#figures-a").inner_text()
    assert IMG in figures_a
    assert SCRIPT in figures_a
    for figure in ("tokens", "TTFT", "tok/s"):
        assert figure not in figures_a
    assert "7 tokens" in page.locator("#figures-b").inner_text()
    assert IMG in page.locator("#answer-b").inner_text()  # the error, as text
    assert IMG in page.locator("#name-a").inner_text()
    assert IMG in page.locator("#reveal").inner_text()


TOKEN_COUNTS = [
    (12, "12 tokens"),
    ("12", "12 tokens"),
    (12.6, "13 tokens"),
    (IMG, ""),
    ("1e999", ""),
    ("Infinity", ""),
    ("NaN", ""),
    ("", ""),
    (None, ""),
    (True, ""),
    ([3], ""),
    ({"n": 3}, ""),
    (-1, ""),
]


def test_figures_show_only_finite_token_counts(page) -> None:
    shown = page.evaluate(
        """(values) => values.map((tokens) => {
            const box = document.createElement('div');
            ChatUi.renderFigures(box, {completion_tokens: tokens});
            return box.textContent;
        })""",
        [value for value, _ in TOKEN_COUNTS],
    )

    assert shown == [text for _, text in TOKEN_COUNTS]


def test_markdown_escapes_before_it_builds_markup(page) -> None:
    source = f"{SCRIPT} {IMG} [x](javascript:alert(1)) `\u00000\u0000` **{IMG}**"

    html = page.evaluate("(s) => SafeMarkdown.render(s)", source)

    for markup in ("<script", "<img", 'href="javascript'):
        assert markup not in html
    assert "&lt;img src=x onerror=window.__pwned=1&gt;" in html
    assert "<strong>&lt;img" in html
    assert "<code>0</code>" in html  # a model's own NUL markers are dropped, not taken as ours
