"""Admission control: at most N requests run, at most M wait, none waits forever."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from inference.errors import QueueFull, QueueTimeout


class Admission:
    """A first-come-first-served gate in front of an engine's batch.

    `max_queue` waiting requests at most: one more is refused at once rather
    than piling up behind a slow batch. A waiter gives up after
    `queue_timeout` seconds. With a `token_budget` (the KV cache's size in
    tokens, for an engine whose slots share one cache), a request also
    reserves the tokens it may use, prompt plus max_tokens, and waits until
    they are free: an admitted request can always finish. The counters are
    what the worker reports.
    """

    def __init__(
        self, max_concurrency: int, max_queue: int, queue_timeout: float, token_budget: int | None = None
    ) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.token_budget = token_budget
        self.running = 0
        self.reserved = 0  # tokens held by running requests
        self._turns: deque[object] = deque()  # waiters, first come first served
        self._changed = asyncio.Condition()

    @property
    def waiting(self) -> int:
        return len(self._turns)

    def _fits(self, tokens: int) -> bool:
        if self.running >= self.max_concurrency:
            return False
        return self.token_budget is None or self.reserved + tokens <= self.token_budget

    @asynccontextmanager
    async def slot(self, tokens: int = 0) -> AsyncIterator[None]:
        """Hold a slot (and `tokens` of the budget) for the block; raise QueueFull or QueueTimeout."""
        async with self._changed:
            if (self._turns or not self._fits(tokens)) and self.waiting >= self.max_queue:
                raise QueueFull(
                    f"The worker is busy: {self.running} requests running and {self.waiting} waiting."
                )
            turn = object()
            self._turns.append(turn)
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self._turns[0] is turn and self._fits(tokens)),
                    timeout=self.queue_timeout,
                )
            except TimeoutError:
                raise QueueTimeout(
                    f"No slot became free within {self.queue_timeout:g} s; try again later."
                ) from None
            finally:
                self._turns.remove(turn)
                self._changed.notify_all()  # the next in line may fit now
            self.running += 1
            self.reserved += tokens
        try:
            yield
        finally:
            async with self._changed:
                self.running -= 1
                self.reserved -= tokens
                self._changed.notify_all()
