"""Admission control: at most N requests run, at most M wait, none waits forever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from inference.errors import QueueFull, QueueTimeout


class Admission:
    """A counting gate in front of an engine's batch.

    `max_queue` waiting requests at most: one more is refused at once rather
    than piling up behind a slow batch. A waiter gives up after
    `queue_timeout` seconds. The counters are what the worker reports.
    """

    def __init__(self, max_concurrency: int, max_queue: int, queue_timeout: float) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self._slots = asyncio.Semaphore(max_concurrency)
        self.running = 0
        self.waiting = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self.waiting >= self.max_queue:
            raise QueueFull(
                f"The worker is busy: {self.running} requests running and {self.waiting} waiting."
            )
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.queue_timeout)
        except TimeoutError:
            raise QueueTimeout(
                f"No slot became free within {self.queue_timeout:g} s; try again later."
            ) from None
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._slots.release()
