"""State tied to an event loop, in one place: the gateway's `Loops`.

An httpx or redis.asyncio connection, a semaphore, a usage stream's writer
belong to the loop that made them. Daphne runs one loop; tests run one per
test. `Loops.get(key, make)` holds `make()`'s value per running loop, keyed
by what it is, and drops the values of closed loops.

Every Redis client the gateway opens (the limits, the queue) comes from
`redis_client`: a command that gets no answer within REDIS_TIMEOUT_SECONDS
fails with a TimeoutError, once (no retries), so that a stalled Redis costs a
request that long and the caller's fallback takes over, never a hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, cast

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


class Loops:
    """Values per running event loop, made on first use; those of closed loops are dropped."""

    def __init__(self) -> None:
        self._values: dict[asyncio.AbstractEventLoop, dict[Hashable, Any]] = {}

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        values = self._here()
        if key not in values:
            values[key] = make()
        return cast(T, values[key])

    def put(self, key: Hashable, value: Any) -> None:
        self._here()[key] = value

    def pop(self, key: Hashable) -> Any:
        return self._here().pop(key, None)

    def keys(self) -> list[Hashable]:
        return list(self._here())

    def _here(self) -> dict[Hashable, Any]:
        loop = asyncio.get_running_loop()
        values = self._values.get(loop)
        if values is None:
            for old in [other for other in self._values if other.is_closed()]:
                del self._values[old]
            values = self._values[loop] = {}
        return values
