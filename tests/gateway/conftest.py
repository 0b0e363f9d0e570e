"""Fixtures for relay tests: registry rows and a fake upstream behind httpx2's MockTransport.

The fake upstream stands in for workers only to test gateway logic (dispatch,
failover, error mapping, usage); end-to-end tests use real worker processes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import timedelta

import httpx2
import pytest
from django.utils import timezone

from portal.gateway import client as gateway_client
from portal.gateway import counters
from portal.gateway.limit_stores import memory_store
from registry.models import ModelAlias, ServedModel, Worker, WorkerStatus
from registry.services.dispatch import clear_caches

Handler = Callable[[httpx2.Request], httpx2.Response]


@pytest.fixture(autouse=True)
def _fresh_gateway_state() -> Iterator[None]:
    clear_caches()
    counters.reset()
    memory_store().clear()
    yield
    clear_caches()
    counters.reset()
    memory_store().clear()


@pytest.fixture
def served_model(db: None) -> ServedModel:
    model = ServedModel.objects.create(name="tiny", default_params={"max_tokens": 5})
    ModelAlias.objects.create(name="tiny-alias", served_model=model)
    return model


def add_worker(model: ServedModel, name: str, **fields: object) -> Worker:
    worker = Worker.objects.create(
        identity=name,
        address=f"http://{name}:9000",
        status=WorkerStatus.ONLINE,
        expires_at=timezone.now() + timedelta(minutes=5),
        **{"max_concurrency": 4, "max_queue": 4, **fields},
    )
    worker.served_models.add(model)
    return worker


def chat_result(model: str = "tiny", text: str = "hi") -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


def sse(*chunks: dict, done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


def chunk(text: str | None = None, usage: dict | None = None) -> dict:
    choices = [] if text is None else [{"index": 0, "delta": {"content": text}, "finish_reason": None}]
    return {"id": "c", "object": "chat.completion.chunk", "model": "tiny", "choices": choices, "usage": usage}


@pytest.fixture
def upstream() -> Iterator[Callable[[Handler], list[httpx2.Request]]]:
    """Install `handler` as every worker; return the list of requests it received."""

    def install(handler: Handler) -> list[httpx2.Request]:
        seen: list[httpx2.Request] = []

        def record(request: httpx2.Request) -> httpx2.Response:
            seen.append(request)
            return handler(request)

        loop = asyncio.get_running_loop()
        gateway_client._clients[loop] = httpx2.AsyncClient(transport=httpx2.MockTransport(record))
        return seen

    yield install
    gateway_client._clients.clear()
