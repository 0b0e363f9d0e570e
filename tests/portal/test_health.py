"""`GET /health` through the real ASGI application: the database, the real Redis, Redis down or silent."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from channels.testing import HttpCommunicator
from django.db import OperationalError

from portal.asgi import application
from portal.health import checks
from tests.portal_process import free_port

pytestmark = pytest.mark.django_db(transaction=True)


async def get(path: str = "/health", method: str = "GET", host: bytes = b"127.0.0.1") -> dict:
    communicator = HttpCommunicator(application, method, path, headers=[(b"host", host)])
    response = await communicator.get_response(timeout=10)
    await communicator.wait(timeout=10)
    return response


def headers(response: dict) -> dict[str, str]:
    return {name.decode().lower(): value.decode() for name, value in response["headers"]}


@pytest.fixture
async def silent_redis() -> AsyncIterator[str]:
    """A port that accepts connections and never answers (a hung Redis)."""
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    for writer in accepted:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_ok_on_the_embedded_default(settings):
    settings.REDIS_URL = None
    # A probe sends the pod's address as Host, which ALLOWED_HOSTS does not list.
    response = await get(host=b"10.1.2.3:8000")
    body = json.loads(response["body"])
    assert response["status"] == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database"}
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["database"]["ms"] >= 0
    assert "set-cookie" not in headers(response)  # no session, no CSRF cookie
    assert "no-store" in headers(response)["cache-control"]


async def test_ok_with_the_real_redis(settings, redis_url):
    settings.REDIS_URL = redis_url
    response = await get()
    body = json.loads(response["body"])
    assert response["status"] == 200, body
    assert body["checks"]["redis"]["ok"] is True
    assert body["checks"]["database"]["ok"] is True


async def test_503_naming_redis_when_nothing_listens(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    response = await get()
    elapsed = time.monotonic() - started
    body = json.loads(response["body"])
    assert response["status"] == 503, body
    assert body["status"] == "error"
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["error"] == "ConnectionError"
    assert body["checks"]["database"]["ok"] is True
    assert elapsed < 3


async def test_503_within_the_bound_when_redis_does_not_answer(settings, silent_redis):
    settings.REDIS_URL = silent_redis
    started = time.monotonic()
    response = await get()
    elapsed = time.monotonic() - started
    body = json.loads(response["body"])
    assert response["status"] == 503, body
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["redis"]["error"] in {"no answer within 2 s", "TimeoutError"}
    assert checks.TIMEOUT_SECONDS - 0.1 <= elapsed < checks.TIMEOUT_SECONDS + 1.5


async def test_503_naming_the_database_without_its_message(settings, monkeypatch):
    settings.REDIS_URL = None

    def refuse() -> None:
        raise OperationalError('connection to server at "10.0.0.5" failed: password authentication failed')

    monkeypatch.setattr(checks, "_select_one", refuse)
    response = await get()
    body = json.loads(response["body"])
    assert response["status"] == 503
    assert body["checks"]["database"]["error"] == "OperationalError"
    assert b"10.0.0.5" not in response["body"]  # /health is public: details go to the log only


async def test_head_is_answered_and_post_refused(settings):
    settings.REDIS_URL = None
    assert (await get(method="HEAD"))["status"] == 200
    assert (await get(method="POST"))["status"] == 405
