"""Redis faults degrade the limits, never hang them or open them: a private redis-server, stalled and stopped.

Each test starts its own redis-server on a free loopback port (the machine's
shared one is never touched), stalls it with SIGSTOP (connections are taken
by the kernel, no answer comes) or stops it (connections are refused), and
checks that limited requests are still answered within 3 s and still
refused past this portal's share of each limit; then that the counting goes
back to Redis when it answers again.
"""

from __future__ import annotations

import asyncio
import re
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import redis

from portal.gateway import limit_stores
from portal.gateway.gateway import current
from portal.gateway.limit_stores import Quota, RedisStore
from portal.gateway.limits import LimitExceeded, TokenEstimate, reserve
from portal.gateway.tasks import drain
from registry.services.keys import create_api_key
from tests.deploy.outages import PrivateRedis
from tests.portal_process import start_portal
from tests.processes import WorkerProcess, start_worker, subprocess_env, wait_for

ANSWER_WITHIN = 3.0
CHAT = {"model": "canned", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        resume(server)
        server.kill()


def stall(server: PrivateRedis) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)


def resume(server: PrivateRedis) -> None:
    if server.process is not None:
        server.process.send_signal(signal.SIGCONT)


def redis_count(url: str, subject: str, kind: str) -> int:
    client = redis.Redis.from_url(url, socket_timeout=2, decode_responses=True)
    keys = client.scan_iter(f"{RedisStore.prefix(subject)}:{kind}:*")
    return sum(int(str(client.get(key) or 0)) for key in keys)


async def timed_reserve(quota: Quota) -> tuple[float, str]:
    started = time.monotonic()
    try:
        (await reserve(current().limits, quota, TokenEstimate(prompt=1))).settle(1)
        await drain()  # the settling runs in the background
        outcome = "ok"
    except LimitExceeded as exc:
        outcome = exc.reason
    return time.monotonic() - started, outcome


@pytest.fixture
def limits_on(settings, private_redis: PrivateRedis, monkeypatch) -> PrivateRedis:
    settings.REDIS_URL, settings.PORTAL_COUNT = private_redis.url, 2
    monkeypatch.setattr(limit_stores, "RETRY_SECONDS", 0.5)
    return private_redis


async def test_a_stalled_redis_costs_one_reservation_its_timeout_and_the_limits_still_refuse(limits_on):
    quota = Quota("key:stall", requests_per_minute=6)
    assert (await timed_reserve(quota))[1] == "ok"
    assert redis_count(limits_on.url, "key:stall", "rpm") == 1
    stall(limits_on)
    try:
        timings = [await timed_reserve(quota) for _ in range(5)]
    finally:
        resume(limits_on)
    # This portal's half of 6 a minute passes, counted here; the first paid the timeout (0.5 s).
    assert [outcome for _, outcome in timings] == ["ok", "ok", "ok", "rpm", "rpm"]
    assert 0.4 < timings[0][0] < 1.5
    assert max(seconds for seconds, _ in timings[1:]) < 0.1
    await asyncio.sleep(0.6)  # RETRY_SECONDS: the next reservation tries Redis again
    # The script that timed out may run when Redis resumes: counted twice then, never nowhere.
    before = redis_count(limits_on.url, "key:stall", "rpm")
    assert before in (1, 2)
    assert (await timed_reserve(quota))[1] == "ok"
    assert redis_count(limits_on.url, "key:stall", "rpm") == before + 1  # counted in Redis again


async def test_slots_held_in_redis_are_freed_once_it_answers_again(limits_on):
    quota = Quota("key:held", max_in_flight=2)
    held = await reserve(current().limits, quota, TokenEstimate())
    flights = f"{RedisStore.prefix('key:held')}:flight"
    client = redis.Redis.from_url(limits_on.url, socket_timeout=2)
    assert client.zcard(flights) == 1
    stall(limits_on)
    try:
        held.settle(0)  # fails against the stalled Redis, and is kept
        await drain()
    finally:
        resume(limits_on)
    await asyncio.sleep(0.6)
    (await reserve(current().limits, quota, TokenEstimate())).settle(
        0
    )  # Redis answers: the kept settling is replayed
    await drain()
    assert client.zcard(flights) == 0


async def test_a_stopped_redis_fails_fast_and_the_limits_still_refuse(limits_on):
    quota = Quota("key:stopped", requests_per_minute=4, max_in_flight=4)
    limits_on.kill()  # refused connections from now on
    timings = [await timed_reserve(quota) for _ in range(4)]
    assert [outcome for _, outcome in timings] == ["ok", "ok", "rpm", "rpm"]  # half of 4
    assert max(seconds for seconds, _ in timings) < 0.5


@pytest.fixture
def worker() -> Iterator[WorkerProcess]:
    args = ["--model-path", "canned", "--backend", "canned", "--model-names", "canned"]
    with start_worker(*args, env=subprocess_env()) as process:
        yield process


def well_inside_a_minute(needed: float = 30) -> None:
    """The fallback counts minutes of this machine's clock: the test must not straddle two."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.2)


def timed_posts(url: str, secret: str, count: int) -> list[tuple[float, int]]:
    answers = []
    with httpx2.Client(timeout=30) as client:
        for _ in range(count):
            started = time.monotonic()
            response = client.post(
                f"{url}/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {secret}"}
            )
            answers.append((time.monotonic() - started, response.status_code))
    return answers


def figures(label: str, answers: list[tuple[float, int]]) -> str:
    seconds = [s for s, _ in answers]
    statuses = [status for _, status in answers]
    each = " ".join(f"{s:.2f}" for s in seconds)
    return (
        f"{label}: statuses {statuses}, latency p50 {statistics.median(seconds):.3f} s, "
        f"max {max(seconds):.3f} s (each: {each})"
    )


def metric(url: str, name: str) -> float:
    text = httpx2.get(f"{url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_portal_answers_limited_requests_within_3_s_while_redis_is_stalled_then_stopped(
    private_redis, worker
):
    """Through a real portal (daphne) and a canned worker; its limits, usage stream and cache use Redis."""
    settings = {"REDIS_URL": private_redis.url, "PORTAL_COUNT": "2", "WORKER_CACHE_SECONDS": "0.2"}
    key, secret = create_api_key(name="stalled", requests_per_minute=12)
    subject = f"key:{key.id}"
    report = []
    with start_portal(extra_env=settings) as portal:
        assert [status for _, status in timed_posts(portal.url, secret, 2)] == [200, 200]
        assert redis_count(private_redis.url, subject, "rpm") == 2
        well_inside_a_minute()
        stall(private_redis)
        try:
            stalled = timed_posts(portal.url, secret, 9)
            down = metric(portal.url, "portal_limits_redis_down")
            fallbacks = metric(portal.url, "portal_limits_fallback_total")
        finally:
            resume(private_redis)
        report.append(figures("stalled", stalled))
        # 6 a minute is this portal's half of 12; the 2 counted in Redis before are not seen here.
        assert [status for _, status in stalled] == [200] * 6 + [429] * 3
        assert max(seconds for seconds, _ in stalled) < ANSWER_WITHIN
        assert (down, fallbacks) == (1.0, 9.0)

        # Redis answers again: after RETRY_SECONDS the counting goes back there.
        time.sleep(limit_stores.RETRY_SECONDS + 0.5)
        # Scripts that timed out ran when Redis resumed (counted twice then, never nowhere).
        before = redis_count(private_redis.url, subject, "rpm")
        back = timed_posts(portal.url, secret, 1)
        report.append(figures("back", back))
        assert back[0][1] == 200
        assert wait_for(lambda: redis_count(private_redis.url, subject, "rpm") == before + 1, timeout=5)
        assert metric(portal.url, "portal_limits_redis_down") == 0.0

        _, other = create_api_key(name="stopped", requests_per_minute=4)
        private_redis.kill()
        stopped = timed_posts(portal.url, other, 4)
        report.append(figures("stopped", stopped))
        assert [status for _, status in stopped] == [200, 200, 429, 429]
        assert max(seconds for seconds, _ in stopped) < ANSWER_WITHIN
        log = portal.output()
    warnings = log.count("limits: Redis failed")
    report.append(f"warnings logged: {warnings}")
    print("\n" + "\n".join(report))
    assert warnings == 1  # at most once a minute, though it failed twice
