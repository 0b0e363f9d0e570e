"""A worker holding the wrong WORKER_TOKEN, live: a real portal and two canned workers on loopback.

What a half-done token rotation produces: one worker still holds the old
token and answers the portal 401. Every request is answered 200 by the other
worker, the refusing one is left out of dispatch, counted in /metrics and
named in one warning; with it alone the client gets 503, never 401.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry.models import UsageRecord, Worker
from registry.services.keys import create_api_key
from tests.portal_process import PortalProcess, start_portal
from tests.processes import WorkerProcess, start_worker, subprocess_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
TOKEN = "live-credentials-portal-token"
STALE = "live-credentials-stale-token"
EXCLUDE_SECONDS = 10.0  # GATEWAY_EXCLUDE_SECONDS' default
CHAT: dict[str, Any] = {"model": "pair", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5}


def canned(token: str) -> WorkerProcess:
    args = ["--model-path", "canned", "--backend", "canned", "--model-names", "pair"]
    extra = ["--heartbeat-interval", "1", "--canned-token-delay", "0.05", "--max-concurrency", "8"]
    return start_worker(*args, *extra, env=subprocess_env({"WORKER_TOKEN": token}))


@pytest.fixture
def portal() -> Iterator[PortalProcess]:
    env = {"WORKER_TOKEN": TOKEN, "WORKER_CACHE_SECONDS": "0.2", "API_KEY_CACHE_SECONDS": "0.5"}
    with start_portal(extra_env=env) as process:
        yield process


def auth_failures(portal: PortalProcess, identity: str) -> float:
    text = httpx2.get(f"{portal.url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "portal_worker_auth_failures_total" and sample.labels.get("worker") == identity
    )


async def _one(api: openai.AsyncOpenAI, stream: bool) -> str:
    if not stream:
        answer = await api.chat.completions.create(**CHAT)
        return answer.choices[0].message.content or ""
    chunks = await api.chat.completions.create(**CHAT, stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


def burst(portal: PortalProcess, secret: str, n: int) -> list[str]:
    """`n` requests at once, half of them streamed: they overlap, so dispatch spreads them."""

    async def run() -> list[str]:
        api = openai.AsyncOpenAI(base_url=f"{portal.url}/v1", api_key=secret, max_retries=0, timeout=20)
        async with api:
            return await asyncio.gather(*[_one(api, i % 2 == 0) for i in range(n)])

    return asyncio.run(run())


def alone(portal: PortalProcess, secret: str) -> httpx2.Response:
    time.sleep(0.3)  # the portal's worker list (0.2 s) follows
    headers = {"Authorization": f"Bearer {secret}"}
    return httpx2.post(f"{portal.url}/v1/chat/completions", json=CHAT, headers=headers, timeout=20)


def test_a_worker_with_a_stale_token_is_failed_over_excluded_counted_and_never_blamed_on_the_client(
    portal,
):
    _, secret = create_api_key(name="k")
    with canned(TOKEN) as good, canned(STALE) as stale:
        bad = Worker.objects.get(address=stale.address)
        started = time.monotonic()
        answers = burst(portal, secret, 8)
        # Overlapping requests reach both workers: the stale one refuses those sent before its first 401.
        during_burst = auth_failures(portal, bad.identity)
        answers += [burst(portal, secret, 1)[0] for _ in range(6)]
        elapsed = time.monotonic() - started
        assert all(answers), answers  # every request answered (openai raises on any non-200)

        assert wait_for(lambda: UsageRecord.objects.count() >= 14, timeout=5)
        served_by = set(UsageRecord.objects.values_list("worker_id", "status", "status_code"))
        assert served_by == {(Worker.objects.get(address=good.address).id, "ok", 200)}
        assert 1 <= during_burst <= 8
        # Then it is left out: asked again at most once per exclusion that ran out.
        asked_again = auth_failures(portal, bad.identity) - during_burst
        print(f"stale worker refused {during_burst:g} in the burst, {asked_again:g} after; {elapsed:.1f} s")
        assert asked_again <= elapsed // EXCLUDE_SECONDS, (during_burst, asked_again, elapsed)

        good.stop()  # the stale worker is left alone
        assert wait_for(lambda: not Worker.objects.filter(address=good.address, status="online"), timeout=10)
        answers_alone = [alone(portal, secret) for _ in range(3)]  # the first may still try `good`
        assert all(a.status_code in (502, 503) for a in answers_alone), [a.text for a in answers_alone]
        assert not any("invalid_worker_token" in a.text for a in answers_alone)
        assert answers_alone[-1].status_code == 503, answers_alone[-1].text
        assert answers_alone[-1].json()["error"]["code"] == "no_worker_available"

    log = portal.output()
    warnings = [line for line in log.splitlines() if "refused the portal's WORKER_TOKEN" in line]
    assert len(warnings) == 1, log
    assert bad.identity in warnings[0]
    assert TOKEN not in log
    assert STALE not in log
