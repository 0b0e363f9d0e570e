"""Poisoned requests through the portal fail alone and exclude no worker (two real SmolLM2 workers).

On main, 5 poisoned requests sent while 8 innocent chats streamed failed all 8,
got 502/503 themselves, and left both workers excluded, so the next ordinary
requests got 503. Now each poisoned request gets the worker's 400 naming the
field (never retried elsewhere), the innocent streams finish with their solo
greedy text, and afterwards both workers still take requests.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from django.utils import timezone

from registry.models import UsageRecord, Worker
from registry.services.keys import create_api_key
from tests.portal_process import PortalProcess, start_portal
from tests.processes import WorkerProcess, all_ready, subprocess_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]
TOKEN = "poisoned-through-portal-token"
MODEL = "smollm2-135m-instruct"
QUESTIONS = ["Tell me a story about a dragon.", "Explain how rain forms.", "Write a poem about the sea."]
TOKENS = 16
LONG = "messages"  # refused by its length before tokenizing (8,192 tokens x 32 characters)
COMPLETION = {"model": MODEL, "prompt": "Hello", "max_tokens": 4}
POISONS: list[tuple[str, dict[str, Any], str]] = [
    ("completions", {**COMPLETION, "prompt": [49152]}, "prompt"),
    ("completions", {**COMPLETION, "stop_token_ids": [49152]}, "stop_token_ids"),
    ("completions", {**COMPLETION, "seed": 2**64}, "seed"),
    ("completions", {**COMPLETION, "stop": ["x"] * 1000}, "stop"),
    (
        "chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": "x" * 200_000}]},
        "messages",
    ),
]


@pytest.fixture
def fleet() -> Iterator[tuple[PortalProcess, list[WorkerProcess]]]:
    env = subprocess_env({"WORKER_TOKEN": TOKEN, "WORKER_CACHE_SECONDS": "0.2"})
    args = ["--model-path", MODEL, "--heartbeat-interval", "1", "--max-concurrency", "8", "--device", "cpu"]
    first, second = all_ready(WorkerProcess(args, env), WorkerProcess(args, env), timeout=300)
    with first, second, start_portal(env=env) as portal:
        assert wait_for(lambda: Worker.objects.filter(status="online").count() == 2, timeout=30)
        yield portal, [first, second]


def chat(question: str) -> dict[str, Any]:
    messages = [{"role": "user", "content": question}]
    return {"model": MODEL, "messages": messages, "temperature": 0, "max_tokens": TOKENS, "stream": True}


def stream_text(url: str, headers: dict[str, str], body: dict[str, Any], started: threading.Event) -> str:
    text = ""
    with (
        httpx2.Client(timeout=120) as client,
        client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                assert "error" not in chunk, chunk
                text += chunk["choices"][0]["delta"].get("content") or ""
                started.set()
    return text


def test_poisoned_requests_fail_alone_and_exclude_no_worker(fleet):
    portal, workers = fleet
    _, secret = create_api_key(name="poison")
    headers = {"Authorization": f"Bearer {secret}"}
    solo = [stream_text(portal.url, headers, chat(q), threading.Event()) for q in QUESTIONS]
    assert all(solo)

    results: list[str] = [""] * 8
    started = [threading.Event() for _ in range(8)]

    def innocent(i: int) -> None:
        results[i] = stream_text(portal.url, headers, chat(QUESTIONS[i % 3]), started[i])

    threads = [threading.Thread(target=innocent, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    assert all(event.wait(120) for event in started)
    poisoned = [
        httpx2.post(f"{portal.url}/v1/{endpoint}", json=body, headers=headers, timeout=60)
        for endpoint, body, _ in POISONS
    ]
    for thread in threads:
        thread.join(120)

    for response, (_, _, param) in zip(poisoned, POISONS, strict=True):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
    assert results == [solo[i % 3] for i in range(8)]

    # Neither worker was excluded: ordinary requests right after are served, by both workers
    # (an excluded worker would get none of 20; a fair draw misses one with odds of 2 in 10^6).
    # First both heartbeats must report the load gone: a stale in-flight figure would rightly
    # steer every request to the other worker. That takes about a second; exclusion lasts ten.
    load_ended = timezone.now()
    idle = Worker.objects.filter(last_heartbeat__gt=load_ended, in_flight=0, queued=0)
    assert wait_for(lambda: idle.count() == 2, timeout=5)
    time.sleep(0.5)  # the portal's candidate cache (WORKER_CACHE_SECONDS=0.2) has seen them
    for i in range(20):
        body = {**COMPLETION, "prompt": f"Count to {i}", "max_tokens": 2}
        answer = httpx2.post(f"{portal.url}/v1/completions", json=body, headers=headers, timeout=60)
        assert answer.status_code == 200, answer.text
    served = UsageRecord.objects.filter(endpoint="completions", status_code=200)
    assert wait_for(lambda: served.count() == 20, timeout=10), list(served.values())
    assert set(served.values_list("worker_id", flat=True)) == set(Worker.objects.values_list("id", flat=True))
    assert all(worker.proc.poll() is None for worker in workers)
