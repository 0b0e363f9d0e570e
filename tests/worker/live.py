"""A real SmolLM2 worker process for the live worker tests, and an openai client for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from tests.processes import WorkerProcess, start_worker


@pytest.fixture(scope="module")
def smol() -> Iterator[WorkerProcess]:
    """SmolLM2 served as "smol" by the transformers engine (the one with beam search and prompt logprobs)."""
    with start_worker(
        "--model-path", "smollm2-135m-instruct", "--model-names", "smol", "--device", "cpu",
        "--backend", "transformers", "--no-register", timeout=300,
    ) as worker:  # fmt: skip
        yield worker


def client(worker: WorkerProcess) -> OpenAI:
    return OpenAI(base_url=f"{worker.address}/v1", api_key="unused", max_retries=0, timeout=120)
