"""Limits across real portals: two daphne portals sharing Redis, one canned worker behind WORKER_TOKEN.

Concurrent clients on both portals cannot push a key past its tokens per
minute (each request reserves a bound on its cost), nor past its requests in
flight; a stream the client leaves is recorded with the tokens the worker
reports from the abort, and counted with them. The worker refuses callers
without the token, so every answer here also shows that the portals send it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import redis

from portal.gateway.limit_stores import WINDOW_SECONDS, RedisStore
from registry.models import ApiKey, UsageRecord
from registry.services.keys import create_api_key
from tests.portal_process import PortalProcess, two_portals
from tests.processes import TEST_REDIS_URL, WorkerProcess, start_worker, subprocess_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
REDIS_URL = TEST_REDIS_URL
TOKEN = "live-limits-worker-token"
SETTINGS = {
    "REDIS_URL": REDIS_URL,
    "WORKER_TOKEN": TOKEN,
    "WORKER_CACHE_SECONDS": "0.2",
    "API_KEY_CACHE_SECONDS": "0.5",
    "USAGE_FLUSH_SECONDS": "0.1",
}
CHAT: dict[str, Any] = {"model": "canned", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("Redis is not answering at 127.0.0.1:6379")
    return client


@pytest.fixture
def worker(redis_client: redis.Redis) -> Iterator[WorkerProcess]:
    redis_client.flushdb()
    args = ["--model-path", "canned", "--backend", "canned", "--model-names", "canned"]
    env = subprocess_env({"WORKER_TOKEN": TOKEN})
    with start_worker(*args, "--canned-token-delay", "0.02", "--max-concurrency", "32", env=env) as process:
        yield process


@pytest.fixture
def portals(worker: WorkerProcess) -> Iterator[tuple[PortalProcess, PortalProcess]]:
    yield from two_portals(extra_env=SETTINGS)


def headers(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()  # type: ignore[misc]
    return int(seconds) + int(micros) / 1e6


def tpm_count(client: redis.Redis, key: ApiKey) -> int:
    window = int(redis_now(client) // WINDOW_SECONDS)
    return int(client.get(f"{RedisStore.prefix(f'key:{key.id}')}:tpm:{window}") or 0)  # type: ignore[arg-type]


def well_inside_a_minute(client: redis.Redis, needed: float = 20) -> None:
    """Wait (bounded) until `needed` seconds of the Redis minute remain: the test must not straddle two."""
    left = WINDOW_SECONDS - redis_now(client) % WINDOW_SECONDS
    if left < needed:
        time.sleep(left + 0.2)


def test_concurrent_clients_on_two_portals_never_pass_the_tokens_per_minute(portals, redis_client):
    key, secret = create_api_key(name="shared", tokens_per_minute=300)
    body = {**CHAT, "max_tokens": 20}
    well_inside_a_minute(redis_client)

    async def one(client: httpx2.AsyncClient, portal: PortalProcess) -> httpx2.Response:
        return await client.post(f"{portal.url}/v1/chat/completions", json=body, headers=headers(secret))

    async def burst() -> list[httpx2.Response]:
        async with httpx2.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(one(client, portals[i % 2]) for i in range(40)))

    responses = asyncio.run(burst())
    statuses = sorted({r.status_code for r in responses})
    served = sum(r.json()["usage"]["total_tokens"] for r in responses if r.status_code == 200)
    assert statuses == [200, 429], [r.text for r in responses if r.status_code not in (200, 429)]
    # Each holds its bound until it settles: the burst's real usage stays within the limit.
    assert 0 < served <= 300
    assert wait_for(lambda: tpm_count(redis_client, key) == served, timeout=10)


def test_requests_in_flight_are_limited_across_portals(portals):
    _, secret = create_api_key(name="one-at-a-time", max_in_flight=2)
    stream = {**CHAT, "max_tokens": 200, "stream": True}
    with httpx2.Client(timeout=30) as client:
        opened = [
            client.stream("POST", f"{p.url}/v1/chat/completions", json=stream, headers=headers(secret))
            for p in portals
        ]
        responses = [o.__enter__() for o in opened]
        try:
            assert [r.status_code for r in responses] == [200, 200]
            # Held until the end: a line iterator that is dropped closes its response, which
            # disconnects the client and frees the slot the test counts on.
            lines = [response.iter_lines() for response in responses]
            for stream_lines in lines:
                next(stream_lines)  # both are generating now
            refused = [
                client.post(f"{p.url}/v1/chat/completions", json=CHAT, headers=headers(secret))
                for p in portals
            ]
            assert [r.status_code for r in refused] == [429, 429]
            assert all("in flight" in r.json()["error"]["message"] for r in refused)
        finally:
            for o in opened:
                o.__exit__(None, None, None)
        # Leaving the streams aborted them and freed their slots (bounded wait for the settling).
        url = f"{portals[0].url}/v1/chat/completions"
        assert wait_for(lambda: client.post(url, json=CHAT, headers=headers(secret)).status_code == 200, 30)


def test_a_stream_left_after_some_tokens_is_recorded_and_counted_with_the_workers_usage(
    portals, redis_client
):
    key, secret = create_api_key(name="leaver", tokens_per_minute=400)
    well_inside_a_minute(redis_client)
    stream = {**CHAT, "max_tokens": 300, "stream": True}
    with (
        httpx2.Client(timeout=30) as client,
        client.stream(
            "POST", f"{portals[0].url}/v1/chat/completions", json=stream, headers=headers(secret)
        ) as response,
    ):
        assert response.status_code == 200
        request_id = response.headers["X-Request-Id"]
        content = 0
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                content += 1
                if content == 10:
                    break

    assert wait_for(lambda: UsageRecord.objects.filter(request_id=request_id).exists(), timeout=15)
    record = UsageRecord.objects.get(request_id=request_id)
    assert record.status == "cancelled"
    assert record.prompt_tokens == 3  # the worker's count, not the portal's bound
    assert 10 <= record.completion_tokens < 300
    assert wait_for(lambda: tpm_count(redis_client, key) == record.total_tokens, timeout=10)

    # The next request may only reserve what is left of the minute; one asking for more than
    # the whole limit is refused outright, naming max_tokens.
    too_big = httpx2.post(
        f"{portals[1].url}/v1/chat/completions",
        json={**CHAT, "max_tokens": 500},
        headers=headers(secret),
        timeout=30,
    )
    assert too_big.status_code == 429
    assert too_big.json()["error"]["param"] == "max_tokens"
