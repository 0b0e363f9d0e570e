"""The shared request queue: its order (priority, then arrival), per-caller caps and expiry, in this
process and in Redis; and the relay waiting in it when every worker is busy (a fake upstream, gateway
logic only: the live test and benchmarks/queue_burst.py use real processes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from asgiref.sync import sync_to_async

from portal.gateway import queue, relay
from portal.gateway.errors import GatewayError
from portal.gateway.gateway import current
from portal.gateway.queue import LocalQueues, QueueTerms, RedisQueues
from registry.models import ServedModel
from registry.services.cache import forget_all
from tests.gateway.conftest import add_worker, chat_result

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}
KEY_A = QueueTerms(caller="key:1")
KEY_B = QueueTerms(caller="key:2")
URGENT = QueueTerms(caller="key:3", priority=5)


@pytest.fixture(params=["memory", "redis"])
async def backend(request: Any) -> AsyncIterator[queue.Backend]:
    if request.param == "memory":
        yield LocalQueues()
    else:
        yield RedisQueues(request.getfixturevalue("redis_url"), current().loops)


async def heads(backend: queue.Backend, members: dict[str, QueueTerms]) -> list[str]:
    """The members in the order they reach the head, each leaving once it is there."""
    order: list[str] = []
    left = dict(members)
    while left:
        head = [m for m, terms in left.items() if await backend.position(7, m, terms) == 0]
        assert len(head) == 1, head
        order.append(head[0])
        await backend.leave(7, head[0], left.pop(head[0]))
    return order


async def test_priority_first_then_arrival(backend):
    members = {"a1": KEY_A, "b1": KEY_B, "a2": KEY_A, "urgent": URGENT}
    for member, terms in members.items():
        assert await backend.enter(7, member, terms, 0, None) is not None
    assert await backend.position(7, "nobody", KEY_A) == -1
    assert await heads(backend, members) == ["urgent", "a1", "b1", "a2"]


async def test_a_caller_holds_at_most_its_cap_and_a_place_given_up_keeps_its_order(backend):
    first = await backend.enter(7, "a1", KEY_A, 2, None)
    assert await backend.enter(7, "a2", KEY_A, 2, None) is not None
    assert await backend.enter(7, "a3", KEY_A, 2, None) is None  # at the cap
    assert await backend.enter(7, "b1", KEY_B, 2, None) is not None  # another key is not
    await backend.leave(7, "a1", KEY_A)
    assert await backend.position(7, "a2", KEY_A) == 0
    assert await backend.enter(7, "a1", KEY_A, 0, first) == first  # refused as busy: back where it was
    assert await heads(backend, {"a1": KEY_A, "a2": KEY_A, "b1": KEY_B}) == ["a1", "a2", "b1"]


async def test_a_place_not_renewed_expires_in_redis(redis_url, monkeypatch):
    monkeypatch.setattr(queue, "PLACE_TTL_MS", 200)
    shared = RedisQueues(redis_url, current().loops)
    await shared.enter(7, "dead-portal", KEY_A, 1, None)
    await shared.enter(7, "alive", KEY_B, 1, None)
    assert await shared.position(7, "alive", KEY_B) == 1
    await asyncio.sleep(0.3)
    assert await shared.position(7, "alive", KEY_B) == 0  # the head that stopped renewing is dropped
    assert await shared.enter(7, "again", KEY_A, 1, None) is not None  # its caller's place expired too


def slow_worker(release: asyncio.Event, taken: list[str]) -> Any:
    """One slot and no queue of its own (`--max-concurrency 1 --max-queue 0`): busy, it answers 503.

    Each request it takes is appended to `taken`, and answered once `release` is set.
    """
    running: list[str] = []

    async def handler(request: httpx2.Request) -> httpx2.Response:
        if running:
            return httpx2.Response(503, json={"error": {"message": "full", "type": "overloaded_error"}})
        running.append(request.headers["X-Request-Id"])
        taken.append(request.headers["X-Request-Id"])
        try:
            await release.wait()
        finally:
            running.clear()
        return httpx2.Response(200, json=chat_result())

    return handler


async def one_slot(served_model: ServedModel, timeout: float) -> None:
    served_model.queue_timeout = timeout
    await sync_to_async(served_model.save)()
    await sync_to_async(add_worker)(served_model, "w1", max_concurrency=1, max_queue=0)


def caller(key_id: int, priority: int = 0, max_queued: int | None = None) -> relay.Caller:
    return relay.Caller(api_key_id=key_id, queue_priority=priority, max_queued=max_queued)


async def until_queued(model: ServedModel, count: int) -> None:
    for _ in range(200):
        if current().queues.waiting_here(model.id) == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {count} queued: {current().queues._waiting_here}")


@pytest.mark.django_db(transaction=True)
async def test_a_request_waits_for_the_busy_worker_and_higher_priority_goes_first(served_model, upstream):
    await one_slot(served_model, timeout=10)
    release, taken = asyncio.Event(), list[str]()
    upstream(slow_worker(release, taken))
    first = asyncio.create_task(relay.chat_completion(dict(BODY), caller=caller(1), request_id="first"))
    await asyncio.sleep(0.05)
    plain = asyncio.create_task(relay.chat_completion(dict(BODY), caller=caller(2), request_id="plain"))
    await until_queued(served_model, 1)
    urgent = asyncio.create_task(relay.chat_completion(dict(BODY), caller=caller(3, 5), request_id="urgent"))
    await until_queued(served_model, 2)
    assert taken == ["first"]
    release.set()
    await asyncio.wait_for(asyncio.gather(first, plain, urgent), 10)
    assert taken == ["first", "urgent", "plain"]
    assert current().queues.local.waiting(served_model.id) == 0


@pytest.mark.django_db(transaction=True)
async def test_the_queue_times_out_with_503_and_retry_after_and_zero_refuses_at_once(served_model, upstream):
    await one_slot(served_model, timeout=0.3)
    release = asyncio.Event()
    upstream(slow_worker(release, []))
    first = asyncio.create_task(relay.chat_completion(dict(BODY), caller=caller(1)))
    await asyncio.sleep(0.05)
    started = asyncio.get_running_loop().time()
    with pytest.raises(GatewayError) as info:
        await relay.chat_completion(dict(BODY), caller=caller(2))
    waited = asyncio.get_running_loop().time() - started
    assert info.value.status_code == 503
    assert info.value.retry_after == queue.QUEUE_TIMEOUT_RETRY_AFTER
    assert "stayed busy for 0.3 s" in info.value.message
    assert 0.3 <= waited < 2
    served_model.queue_timeout = 0
    await sync_to_async(served_model.save)()
    forget_all()
    started = asyncio.get_running_loop().time()
    with pytest.raises(GatewayError) as info:
        await relay.chat_completion(dict(BODY), caller=caller(2))
    assert info.value.status_code == 503
    assert "busy" in info.value.message
    assert asyncio.get_running_loop().time() - started < 0.2
    release.set()
    await first


@pytest.mark.django_db(transaction=True)
async def test_a_caller_over_its_queue_cap_gets_429_and_a_cancelled_request_leaves_the_queue(
    served_model, upstream
):
    await one_slot(served_model, timeout=10)
    release = asyncio.Event()
    upstream(slow_worker(release, []))
    first = asyncio.create_task(relay.chat_completion(dict(BODY), caller=caller(1)))
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(relay.chat_completion(dict(BODY), caller=caller(2, max_queued=1)))
    await until_queued(served_model, 1)
    with pytest.raises(GatewayError) as info:
        await relay.chat_completion(dict(BODY), caller=caller(2, max_queued=1))
    assert info.value.status_code == 429
    assert info.value.code == "queue_limit_exceeded"
    waiting.cancel()  # its client left
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert current().queues.local.waiting(served_model.id) == 0
    assert current().queues.waiting_here(served_model.id) == 0
    release.set()
    await first
