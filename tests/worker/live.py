"""A real SmolLM2 worker process for the live worker tests, and an openai client for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from tests.processes import WorkerProcess, start_worker


@pytest.fixture(scope="module")
def smol() -> Iterator[WorkerProcess]:
    """SmolLM2 served as "smol" by the transformers engine (the one with beam search and prompt logprobs).

    In float32: its seeded samples repeat whatever else shares the batch. In
    bfloat16 (the default where the CPU has it) the rounding depends on the
    batch, and a repeated seeded request diverged after a few tokens.
    """
    with start_worker(
        "--model-path", "smollm2-135m-instruct", "--model-names", "smol", "--device", "cpu",
        "--backend", "transformers", "--dtype", "float32", "--no-register", timeout=300,
    ) as worker:  # fmt: skip
        yield worker


def client(worker: WorkerProcess) -> OpenAI:
    return OpenAI(base_url=f"{worker.address}/v1", api_key="unused", max_retries=0, timeout=120)
