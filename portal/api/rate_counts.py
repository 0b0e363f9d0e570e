"""Per-minute counts behind the rate limits, kept without leaving the event loop.

Embedded (no REDIS_URL) there is one portal process, so the counts live in its
memory. With REDIS_URL they live in Redis, reached through redis.asyncio in one
round trip per count, so every portal copy counts against the same minute.
Either way a count costs no thread hop: the Django cache's async methods run
each call in a thread, twice or three times per request.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import redis.asyncio
from django.conf import settings

WINDOW_SECONDS = 60


class RateCounts(Protocol):
    async def add(self, name: str, window: int, amount: int) -> int:
        """Add `amount` to `name`'s count in minute `window`; return the new count."""
        ...

    async def get(self, name: str, window: int) -> int:
        """`name`'s count in minute `window` (0 when nothing was counted)."""
        ...


class MemoryCounts:
    """Counts in this process; minutes before the previous one are dropped as time moves on."""

    def __init__(self) -> None:
        self._windows: dict[int, dict[str, int]] = {}

    async def add(self, name: str, window: int, amount: int) -> int:
        if window not in self._windows:
            self._windows = {w: c for w, c in self._windows.items() if w >= window - 1}
        counts = self._windows.setdefault(window, {})
        counts[name] = counts.get(name, 0) + amount
        return counts[name]

    async def get(self, name: str, window: int) -> int:
        return self._windows.get(window, {}).get(name, 0)

    def clear(self) -> None:
        self._windows.clear()


class RedisCounts:
    """Counts in Redis, shared by every portal copy; each key expires after two minutes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: dict[asyncio.AbstractEventLoop, redis.asyncio.Redis] = {}

    def _client(self) -> redis.asyncio.Redis:
        # A redis.asyncio connection belongs to the loop that opened it: one client per loop.
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            for old in [other for other in self._clients if other.is_closed()]:
                del self._clients[old]
            client = self._clients[loop] = redis.asyncio.Redis.from_url(self.url)
        return client

    @staticmethod
    def _key(name: str, window: int) -> str:
        return f"portal:rate:{name}:{window}"

    async def add(self, name: str, window: int, amount: int) -> int:
        key = self._key(name, window)
        async with self._client().pipeline(transaction=True) as pipe:
            pipe.incrby(key, amount)
            pipe.expire(key, 2 * WINDOW_SECONDS)
            count, _ = await pipe.execute()
        return int(count)

    async def get(self, name: str, window: int) -> int:
        return int(await self._client().get(self._key(name, window)) or 0)


_memory = MemoryCounts()
_redis: RedisCounts | None = None


def rate_counts() -> RateCounts:
    """Redis counts when REDIS_URL is set, this process's otherwise (read at call time)."""
    global _redis
    url = settings.REDIS_URL
    if not url:
        return _memory
    if _redis is None or _redis.url != url:
        _redis = RedisCounts(url)
    return _redis


def clear_memory_counts() -> None:
    """Forget this process's counts (tests)."""
    _memory.clear()
