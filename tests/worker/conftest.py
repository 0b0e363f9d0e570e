"""Fixtures: the worker's HTTP app in-process over the canned (fake) engine; one real SmolLM2 process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx2
import pytest

from inference.engines.base import EngineConfig
from inference.engines.canned import CannedTokenEngine
from inference.worker.app import build_app
from inference.worker.serving import WorkerContext
from tests.processes import WorkerProcess, start_worker

MakeClient = Callable[..., httpx2.AsyncClient]


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """Build an app over a CannedTokenEngine with the given config and return a client for it."""
    clients: list[httpx2.AsyncClient] = []

    def make(
        *,
        stream_interval: int = 1,
        served: tuple[str, ...] = ("canned",),
        token: str | None = None,
        token_fallbacks: tuple[str, ...] = (),
        **config: Any,
    ) -> httpx2.AsyncClient:
        extra: dict[str, Any] = {k: config.pop(k) for k in ("token_delay", "task") if k in config}
        engine = CannedTokenEngine(EngineConfig(model_path="canned", extra=extra, **config))
        ctx = WorkerContext(
            engine=engine,
            served_names=list(served),
            stream_interval=stream_interval,
            token=token,
            token_fallbacks=token_fallbacks,
        )
        client = httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=build_app(ctx)), base_url="http://worker"
        )
        client.ctx = ctx  # type: ignore[attr-defined]
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
async def client(make_client: MakeClient) -> httpx2.AsyncClient:
    return make_client()


@pytest.fixture(scope="package")
def smol() -> Iterator[WorkerProcess]:
    """SmolLM2 served as "smol" by the transformers engine (the one with beam search and prompt logprobs).

    One process for the live tests of this package; they send it requests and
    change nothing in it. In float32: its seeded and greedy answers repeat
    whatever else shares the batch. In bfloat16 (the default where the CPU has
    it) the rounding depends on the batch, and a repeated seeded request
    diverged after a few tokens.
    """
    with start_worker(
        "--model-path", "smollm2-135m-instruct", "--model-names", "smol", "--device", "cpu",
        "--backend", "transformers", "--dtype", "float32", "--no-register", timeout=300,
    ) as worker:  # fmt: skip
        yield worker
