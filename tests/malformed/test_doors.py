"""The malformed-input corpus against every door: no answer >= 500 and no process dies.

Real processes on loopback: a SmolLM2 worker and a MiniLM worker (both asking
for WORKER_TOKEN), a portal in front of them, and the corpus sent to the
portal's `/v1`, the signed API, the chat websocket and the workers directly,
four requests at a time. Each door's status histogram is printed (run with `-s` to see it).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from portal import env
from registry.services.credentials import create_app_credential
from registry.services.keys import create_api_key
from tests.malformed.corpus import Case, cases, encode, field_cases, hostile_values, raw_cases
from tests.portal_process import PortalProcess, start_portal
from tests.processes import WorkerProcess, all_ready, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]
TOKEN = "malformed-corpus-worker-token"
CHAT_MODEL, EMBED_MODEL = "smollm2-135m-instruct", "all-minilm-l6-v2"
CONCURRENCY = 4
ENDPOINTS = {"chat/completions": CHAT_MODEL, "completions": CHAT_MODEL, "embeddings": EMBED_MODEL}


class Tally:
    """Statuses per door, and the cases that broke the rule (>= 500, or no answer at all)."""

    def __init__(self) -> None:
        self.statuses: dict[str, Counter[int | str]] = {}
        self.broken: list[str] = []

    def add(self, door: str, case: str, outcome: int | str, *, failed: bool, detail: str = "") -> None:
        self.statuses.setdefault(door, Counter())[outcome] += 1
        if failed:
            self.broken.append(f"{door} | {case} | {outcome} | {detail[:200]}")

    def report(self) -> str:
        lines = []
        for door, counts in self.statuses.items():
            histogram = ", ".join(f"{status}: {n}" for status, n in sorted(counts.items(), key=str))
            lines.append(f"{door}: {sum(counts.values())} cases; {histogram}")
        return "\n".join(lines)


def post_all(tally: Tally, door: str, url: str, all_cases: Iterable[Case], headers: dict[str, str]) -> None:
    """Send every case, CONCURRENCY at a time (as clients do; a bad request must fail only itself)."""

    def post(case: Case) -> tuple[Case, httpx2.Response | httpx2.HTTPError]:
        sent = dict(headers)
        if case.content_type:
            sent["Content-Type"] = case.content_type
        try:
            return case, http.post(url, content=case.body, headers=sent)
        except httpx2.HTTPError as exc:
            return case, exc

    with httpx2.Client(timeout=120) as http, ThreadPoolExecutor(CONCURRENCY) as pool:
        for case, outcome in pool.map(post, all_cases):
            if isinstance(outcome, httpx2.HTTPError):
                tally.add(door, case.name, type(outcome).__name__, failed=True)
            else:
                status = outcome.status_code
                tally.add(door, case.name, status, failed=status >= 500, detail=outcome.text)


@pytest.fixture
def fleet() -> Iterator[tuple[PortalProcess, list[WorkerProcess]]]:
    env = subprocess_env({"WORKER_TOKEN": TOKEN, "CHAT_ALLOW_ANONYMOUS": "true"})
    beat = ["--heartbeat-interval", "1"]
    # A 512-token context: the corpus's 5,000-token prompt is refused (400) instead of prefilled
    # for a minute, and an answer without max_tokens stops within it; every case is still sent.
    chat = WorkerProcess(["--model-path", CHAT_MODEL, *beat, "--max-model-len", "512"], env)
    chat, embed = all_ready(chat, WorkerProcess(["--model-path", EMBED_MODEL, *beat], env), timeout=300)
    with chat, embed, start_portal(env=env) as portal:
        yield portal, [chat, embed]


def signed_cases(app_id: str) -> Iterator[Case]:
    """Raw bodies, then plain-signed envelopes whose fields (and whose data's fields) are hostile."""
    yield from raw_cases()

    def envelope(**fields: Any) -> dict[str, Any]:
        # Two tokens, as the OpenAI bodies ask: an envelope the API accepts answers at once.
        data = {"prompt": "hi", "max_tokens": 2}
        base = {"appId": app_id, "signType": "plain", "timestamp": int(time.time()), "data": data}
        return {**base, **fields}

    for field in ("appId", "signType", "timestamp", "data", "version", "signData"):
        for label, value in hostile_values():
            yield Case(f"{field} = {label}", encode(envelope(**{field: value})))
    for case in field_cases("chat/completions", CHAT_MODEL):
        data = json.loads(case.body)
        data["prompt"] = "hi"
        yield Case(f"data.{case.name}", encode(envelope(data=data)))


def chat_socket_messages() -> Iterator[tuple[str, str | bytes]]:
    """Frames for the chat websocket: raw ones, then each message type with hostile fields."""
    for case in raw_cases()[:21]:  # the ten-megabyte bodies exceed any websocket frame limit
        yield case.name, case.body
        with contextlib.suppress(UnicodeDecodeError):
            yield f"{case.name} (text)", case.body.decode()
    shapes: dict[str, dict[str, Any]] = {
        "chat.send": {"model": CHAT_MODEL, "content": "hi", "params": {"max_tokens": 2}},
        "chat.retry": {"model": CHAT_MODEL, "conversation_id": 1},
        "arena.send": {"model_a": CHAT_MODEL, "model_b": CHAT_MODEL, "prompt": "hi"},
        "arena.vote": {"battle_id": 1, "choice": "a"},
    }
    for kind, fields in shapes.items():
        for field in [*fields, "params", "conversation_id", "system_prompt", "type"]:
            for label, value in hostile_values():
                # A text frame, as the page sends (bytes would be a binary frame, refused as such).
                yield f"{kind}.{field} = {label}", encode({"type": kind, **fields, field: value}).decode()


def exercise_chat_socket(tally: Tally, portal: PortalProcess) -> None:
    cookies = httpx2.get(f"{portal.url}/chat/", timeout=10).cookies
    cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
    url = portal.url.replace("http://", "ws://") + "/ws/chat/"
    headers = {"Cookie": cookie, "Origin": portal.url}
    with ws_connect(url, additional_headers=headers, max_size=None) as socket:
        json.loads(socket.recv(timeout=10))  # models.list
        for name, frame in chat_socket_messages():
            try:
                socket.send(frame)
                kinds = until_models_list(socket)
                if {"chat.started", "arena.started"} & set(kinds):
                    # A valid message started an answer: stop it before the next case.
                    socket.send(json.dumps({"type": "chat.stop"}))
                    socket.send(json.dumps({"type": "arena.stop"}))
                    until_models_list(socket)
            except (ConnectionClosed, TimeoutError) as exc:
                tally.add("chat websocket", name, type(exc).__name__, failed=True)
                return
            tally.add("chat websocket", name, kinds[0] if kinds else "no reply", failed=False)


def until_models_list(socket: Any) -> list[str]:
    """Probe with models.list; return the types of the messages received before its answer.

    The socket must still answer after every frame; an answer that started streams on
    in the background, so its tokens may arrive here too.
    """
    socket.send(json.dumps({"type": "models.list"}))
    kinds: list[str] = []
    while True:
        kind = str(json.loads(socket.recv(timeout=30)).get("type"))
        if kind == "models.list":
            return [k for k in kinds if k not in ("chat.token", "arena.token")]
        kinds.append(kind)


def test_malformed_inputs_get_no_5xx_and_kill_no_process(fleet):
    portal, workers = fleet
    tally = Tally()
    _, secret = create_api_key(name="corpus")
    auth = {"Authorization": f"Bearer {secret}"}
    for endpoint, model in ENDPOINTS.items():
        post_all(tally, f"portal /v1/{endpoint}", f"{portal.url}/v1/{endpoint}", cases(endpoint, model), auth)
        worker = workers[0] if model == CHAT_MODEL else workers[1]
        worker_url, headers = f"{worker.address}/v1/{endpoint}", {"Authorization": f"Bearer {TOKEN}"}
        post_all(tally, f"worker /v1/{endpoint}", worker_url, cases(endpoint, model), headers)

    create_app_credential(app_id="corpus-app", allow_plain=True)
    post_all(tally, "signed /api/chat", f"{portal.url}/api/chat", signed_cases("corpus-app"), {})
    exercise_chat_socket(tally, portal)

    report = tally.report()
    print("\n" + report)
    # Kept for the record (scripts/test runs pytest -q, which shows no output of a passing test).
    (env.VAR_DIR / "malformed-report.txt").write_text(report + "\n")
    assert tally.broken == [], "\n".join(tally.broken[:40])
    for process in workers:
        assert process.proc.poll() is None, f"a worker died:\n{process.output[-3000:]}"
        assert httpx2.get(f"{process.address}/health", timeout=5).status_code == 200
    assert portal.proc.poll() is None, portal.output()
    assert httpx2.get(f"{portal.url}/v1/models", headers=auth, timeout=10).status_code == 200
