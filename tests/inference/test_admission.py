"""Admission: slots, a token budget, first come first served, a bounded queue and a timeout."""

from __future__ import annotations

import asyncio

import pytest

from inference.engines.admission import Admission
from inference.errors import QueueFull, QueueTimeout


async def test_a_request_waits_until_its_tokens_are_free_and_the_first_waiter_goes_first() -> None:
    gate = Admission(max_concurrency=4, max_queue=4, queue_timeout=5, token_budget=100)
    order: list[str] = []
    release = asyncio.Event()

    async def hold(name: str, tokens: int) -> None:
        async with gate.slot(tokens):
            order.append(name)
            await release.wait()

    first = asyncio.create_task(hold("big", 70))
    await asyncio.sleep(0.01)
    waiting = [asyncio.create_task(hold("second", 50)), asyncio.create_task(hold("small", 10))]
    await asyncio.sleep(0.01)
    # "small" would fit beside "big", but "second" came first and does not: both wait.
    assert order == ["big"]
    assert (gate.running, gate.waiting, gate.reserved) == (1, 2, 70)
    release.set()
    await asyncio.gather(first, *waiting)
    assert order == ["big", "second", "small"]
    assert (gate.running, gate.waiting, gate.reserved) == (0, 0, 0)


async def test_a_full_queue_refuses_at_once_and_a_waiter_times_out() -> None:
    gate = Admission(max_concurrency=1, max_queue=1, queue_timeout=0.2)
    async with gate.slot():
        waiter = asyncio.create_task(gate.slot().__aenter__())
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            async with gate.slot():
                pass
        with pytest.raises(QueueTimeout):
            await waiter
    assert (gate.running, gate.waiting) == (0, 0)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    gate = Admission(max_concurrency=1, max_queue=2, queue_timeout=5)
    async with gate.slot():
        waiter = asyncio.create_task(gate.slot().__aenter__())
        await asyncio.sleep(0.01)
        assert gate.waiting == 1
        waiter.cancel()
        await asyncio.sleep(0.01)
        assert gate.waiting == 0
    async with gate.slot():
        assert gate.running == 1
