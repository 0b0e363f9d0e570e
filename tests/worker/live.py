"""An openai client for a real worker process (the worker itself: `smol` in conftest.py)."""

from __future__ import annotations

from openai import OpenAI

from tests.processes import WorkerProcess


def client(worker: WorkerProcess) -> OpenAI:
    return OpenAI(base_url=f"{worker.address}/v1", api_key="unused", max_retries=0, timeout=120)
