"""A poisoned request sent while 8 innocent ones stream fails alone (real SmolLM2 worker process).

Each poison once gave a 500 to every request in the batch on main (a token
id past the vocabulary, a temperature of 1e-40, a seed of 2**64). Now the
poisoned request gets a 400 naming the field (or, for the tiny temperature,
a greedy answer), the 8 innocent streams finish with the same text as their
solo greedy runs, and the worker stays up. The worker is the package's
float32 SmolLM2 (conftest.py), whose greedy answers do not depend on the batch.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx2
import pytest

from tests.processes import WorkerProcess

pytestmark = pytest.mark.slow

QUESTIONS = [
    "Tell me a story about a dragon.",
    "Explain how rain forms.",
    "Write a poem about the sea.",
    "Describe a busy market.",
]
TOKENS = 24


def chat_body(question: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "smol",
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": TOKENS,
        "stream": True,
        **extra,
    }


def stream_text(address: str, body: dict[str, Any], started: threading.Event | None = None) -> str:
    """Stream a chat completion; set `started` at the first content chunk; return the text."""
    text = ""
    with (
        httpx2.Client(timeout=120) as client,
        client.stream("POST", f"{address}/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            assert "error" not in chunk, chunk
            text += chunk["choices"][0]["delta"].get("content") or ""
            if text and started is not None:
                started.set()
    return text


@pytest.fixture(scope="module")
def solo(smol: WorkerProcess) -> list[str]:
    texts = [stream_text(smol.address, chat_body(q)) for q in QUESTIONS]
    assert all(texts)
    return texts


def with_innocents(address: str, send_poison: Any) -> tuple[list[str], Any]:
    """Start 8 innocent streams, send the poison once all are generating, return both outcomes."""
    results: list[str] = [""] * 8
    started = [threading.Event() for _ in range(8)]

    def run(i: int) -> None:
        results[i] = stream_text(address, chat_body(QUESTIONS[i % 4]), started[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    assert all(event.wait(120) for event in started)
    poisoned = send_poison()
    for thread in threads:
        thread.join(120)
    return results, poisoned


def post(address: str, path: str, **kwargs: Any) -> httpx2.Response:
    return httpx2.post(f"{address}{path}", timeout=120, **kwargs)


COMPLETION = {"model": "smol", "prompt": "Hello", "max_tokens": 8}
POISONS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "prompt id past the vocabulary": (
        "/v1/completions",
        {"json": {**COMPLETION, "prompt": [49152]}},
        "prompt",
    ),
    "stop token id past the vocabulary": (
        "/v1/completions",
        {"json": {**COMPLETION, "stop_token_ids": [2, 49152]}},
        "stop_token_ids",
    ),
    "seed 2**64": ("/v1/completions", {"json": {**COMPLETION, "seed": 2**64}}, "seed"),
    "a thousand stop strings": ("/v1/completions", {"json": {**COMPLETION, "stop": ["x"] * 1000}}, "stop"),
    "NaN temperature": (
        "/v1/completions",
        {"content": b'{"model": "smol", "prompt": "Hello", "temperature": NaN}'},
        "temperature",
    ),
    "infinite top_p": (
        "/v1/completions",
        {"content": b'{"model": "smol", "prompt": "Hello", "temperature": 1, "top_p": Infinity}'},
        "top_p",
    ),
    "deep nesting": ("/v1/chat/completions", {"content": b"[" * 100_000}, None),
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_a_poisoned_request_fails_alone_with_a_400_naming_the_field(
    smol: WorkerProcess, solo: list[str], poison: str
) -> None:
    path, kwargs, param = POISONS[poison]
    innocent, response = with_innocents(smol.address, lambda: post(smol.address, path, **kwargs))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert innocent == solo * 2
    assert smol.proc.poll() is None
    assert httpx2.get(f"{smol.address}/health", timeout=5).status_code == 200


def test_a_temperature_of_1e_40_is_served_greedily_beside_the_others(
    smol: WorkerProcess, solo: list[str]
) -> None:
    body = chat_body(QUESTIONS[0], temperature=1e-40)
    innocent, text = with_innocents(smol.address, lambda: stream_text(smol.address, body))
    assert text == solo[0]
    assert innocent == solo * 2
    assert smol.proc.poll() is None
