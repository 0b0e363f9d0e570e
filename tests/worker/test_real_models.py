"""Workers serving the packaged models (SmolLM2, MiniLM) on the CPU, as real processes.

One process per model for the whole module; the openai SDK is the client
where it can be, so the wire format is checked by OpenAI's own parser.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from inference.engines.transformers_engine import cpu_has_bf16
from tests.processes import WorkerProcess, start_worker
from tests.worker.live import client

pytestmark = pytest.mark.slow
QUESTION: Any = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smol() -> Iterator[WorkerProcess]:
    """SmolLM2 on the transformers engine at its default precision (bfloat16 where the CPU has it)."""
    with start_worker(
        "--model-path", "smollm2-135m-instruct", "--model-names", "smol", "--device", "cpu",
        "--backend", "transformers", "--no-register", timeout=300,
    ) as worker:  # fmt: skip
        yield worker


@pytest.fixture(scope="module")
def minilm() -> Iterator[WorkerProcess]:
    with start_worker(
        "--model-path", "all-minilm-l6-v2", "--model-names", "mini", "--device", "cpu", "--no-register",
        timeout=300,
    ) as worker:  # fmt: skip
        yield worker


def test_smollm2_answers_paris_at_temperature_zero(smol: WorkerProcess) -> None:
    # --dtype auto: bfloat16 where the CPU multiplies it natively (this answer is its quality check).
    dtype = "bfloat16" if cpu_has_bf16() else "float32"
    assert f"Engine: transformers on cpu ({dtype}" in smol.output
    answer = client(smol).chat.completions.create(
        model="smol", messages=QUESTION, temperature=0, max_tokens=24
    )
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0


def test_smollm2_streams_paris_with_usage(smol: WorkerProcess) -> None:
    stream = client(smol).chat.completions.create(
        model="smol",
        messages=QUESTION,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens >= 1


def test_smollm2_stops_at_a_stop_string(smol: WorkerProcess) -> None:
    answer = client(smol).chat.completions.create(
        model="smol", messages=QUESTION, temperature=0, max_tokens=24, stop=["Paris"]
    )
    assert "Paris" not in (answer.choices[0].message.content or "")
    assert answer.choices[0].finish_reason == "stop"


def test_smollm2_sse_ends_with_done(smol: WorkerProcess) -> None:
    body = {
        "model": "smol",
        "prompt": "The capital of France is",
        "max_tokens": 5,
        "temperature": 0,
        "stream": True,
    }
    response = httpx2.post(f"{smol.address}/v1/completions", json=body, timeout=120)
    events = [block for block in response.text.split("\n\n") if block]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_minilm_puts_similar_sentences_closer_than_unrelated(minilm: WorkerProcess) -> None:
    texts = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "The stock market fell sharply today.",
    ]
    result = client(minilm).embeddings.create(model="mini", input=texts)
    vectors = [d.embedding for d in result.data]
    assert len(vectors[0]) == 384
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2


def test_minilm_refuses_chat(minilm: WorkerProcess) -> None:
    body = {"model": "mini", "messages": QUESTION}
    response = httpx2.post(f"{minilm.address}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"
