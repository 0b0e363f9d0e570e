"""The portal's Redis connections: one client per running event loop, every wait on it bounded.

redis.asyncio connections belong to the loop that opened them, hence
`PerLoop`. Every client the gateway opens (the limits, the queue) comes from
`redis_client`: a command that gets no answer within REDIS_TIMEOUT_SECONDS
fails with a TimeoutError, once (no retries), so that a stalled Redis costs a
request that long and the caller's fallback takes over, never a hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

import redis.asyncio
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

T = TypeVar("T")


def redis_client(url: str) -> redis.asyncio.Redis:
    """A client of `url` whose connects and commands each wait at most REDIS_TIMEOUT_SECONDS."""
    timeout = settings.REDIS_TIMEOUT_SECONDS
    return redis.asyncio.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


class PerLoop(Generic[T]):
    """`make()`'s value for the running loop, made on first use; those of closed loops are dropped."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._values: dict[asyncio.AbstractEventLoop, T] = {}

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is None:
            for old in [other for other in self._values if other.is_closed()]:
                del self._values[old]
            value = self._values[loop] = self._make()
        return value
