"""Fixtures for relay tests: registry rows and a fake upstream behind httpx2's MockTransport.

The fake upstream stands in for workers only to test gateway logic (dispatch,
failover, error mapping, usage); end-to-end tests use real worker processes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import httpx2
import pytest
from django.utils import timezone

from portal.gateway.gateway import Gateway
from registry.models import ModelAlias, ServedModel, Worker, WorkerStatus

Handler = Callable[[httpx2.Request], httpx2.Response]


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
def upstream(gateway: Gateway) -> Callable[[Handler], list[httpx2.Request]]:
    """Install `handler` as every worker (the test's gateway sends to it); return its requests."""

    def install(handler: Handler) -> list[httpx2.Request]:
        seen: list[httpx2.Request] = []

        def record(request: httpx2.Request) -> httpx2.Response:
            seen.append(request)
            return handler(request)

        gateway.use_transport(httpx2.MockTransport(record))
        return seen

    return install
