"""The shared queue end to end: a burst of 3x what one real canned worker holds, through two real portals
that share the queue in Redis, is served in full; the same burst with the queue off is partly refused.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager

import httpx2
import pytest

from registry.models import ServedModel, UsageRecord
from registry.services.keys import create_api_key
from tests.portal_process import two_portals
from tests.processes import start_worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
SLOTS, BURST = 2, 6


async def send_burst(urls: list[str], secret: str) -> list[int]:
    body = {
        "model": "queued",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8,
        "stream": True,
    }
    headers = {"Authorization": f"Bearer {secret}"}

    async def one(client: httpx2.AsyncClient, url: str) -> int:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            await response.aread()
            return response.status_code

    async with httpx2.AsyncClient(timeout=30) as client:
        return list(await asyncio.gather(*[one(client, urls[i % 2]) for i in range(BURST)]))


def test_a_burst_over_capacity_waits_in_the_shared_queue_instead_of_failing(redis_url):
    env = {"REDIS_URL": redis_url, "WORKER_CACHE_SECONDS": "0.2"}
    worker_args = ["--model-path", "canned", "--backend", "canned", "--model-names", "queued",
                   "--max-concurrency", str(SLOTS), "--max-queue", "0", "--canned-token-delay", "0.05",
                   "--heartbeat-interval", "1"]  # fmt: skip
    _, secret = create_api_key(name="burst")
    with start_worker(*worker_args), contextmanager(two_portals)(extra_env=env) as portals:
        urls = [f"{p.url}/v1/chat/completions" for p in portals]
        assert asyncio.run(send_burst(urls, secret)) == [200] * BURST
        assert wait_for(lambda: UsageRecord.objects.filter(status="ok").count() == BURST, timeout=10)
        model = ServedModel.objects.get(name="queued")
        model.queue_timeout = 0  # the portals read it again within WORKER_CACHE_SECONDS
        model.save()
        assert wait_for(lambda: 503 in asyncio.run(send_burst(urls, secret)), timeout=10)
