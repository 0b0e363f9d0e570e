"""A per-process read-through cache for the request path's database reads.

A fresh value is served at once. An expired one is still served while one
background task reloads it, so a wave of requests at expiry does not queue on
Django's single sync thread; past `max_stale` the caller waits for the load.
Concurrent misses for one key share a single load (no thundering herd).
It is an LRU with a size cap: a flood of distinct keys (random API keys,
unknown model names) evicts the least recently used entries, one at a time,
and never grows the process. While the database is away, a value past
`max_stale` is still served rather than the request failing.

Every cache of the process is forgotten at once by `forget_all`: after an
admin change (the registry version moved) and when a fresh gateway starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db import DatabaseError

T = TypeVar("T")
logger = logging.getLogger(__name__)
# Every cache made in this process (weakly: a cache that nothing uses any more goes with it).
_every: weakref.WeakSet[RefreshingCache[Any]] = weakref.WeakSet()


def forget_all() -> None:
    """Forget every cached lookup of this process: the next read goes to the database."""
    for cache in list(_every):
        cache.clear()


@dataclass
class _Entry(Generic[T]):
    value: T
    loaded_at: float


class RefreshingCache(Generic[T]):
    """Cache `load(key)` results for `ttl()` seconds, serving stale ones up to `max_stale()` while reloading.

    `ttl` and `max_stale` are callables so that settings are read at call time;
    at most `max_entries` values are kept, the least recently used going first.
    An expired value for which `reload_first(value)` is true is reloaded before it is served.
    """

    def __init__(
        self,
        load: Callable[[Hashable], Awaitable[T]],
        *,
        ttl: Callable[[], float],
        max_stale: Callable[[], float],
        max_entries: int = 10_000,
        reload_first: Callable[[T], bool] = lambda value: False,
    ) -> None:
        self._load = load
        self._reload_first = reload_first  # an expired value the caller waits for a reload of
        self._ttl = ttl
        self._max_stale = max_stale
        self._max_entries = max_entries
        self._entries: OrderedDict[Hashable, _Entry[T]] = OrderedDict()
        self._loading: dict[Hashable, asyncio.Future[T]] = {}
        _every.add(self)

    async def get(self, key: Hashable) -> T:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            age = time.monotonic() - entry.loaded_at
            if age < self._ttl():
                return entry.value
            if age < self._max_stale() and not self._reload_first(entry.value):
                self._start_load(key)  # refresh behind the caller's back
                return entry.value
        try:
            return await asyncio.shield(self._start_load(key))
        except DatabaseError as exc:
            if entry is None:
                raise
            # The database is away: the last value known beats a failed request.
            logger.warning("serving a value %.0f s old, the database failed: %s", age, exc)
            return entry.value

    def clear(self) -> None:
        self._entries.clear()

    def forget(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def _start_load(self, key: Hashable) -> asyncio.Future[T]:
        pending = self._loading.get(key)
        loop = asyncio.get_running_loop()
        if pending is not None and pending.get_loop() is loop:
            return pending
        future = loop.create_task(self._load_and_store(key))
        future.add_done_callback(_log_failure)
        self._loading[key] = future
        return future

    async def _load_and_store(self, key: Hashable) -> T:
        try:
            value = await self._load(key)
        finally:
            self._loading.pop(key, None)
        self._entries[key] = _Entry(value, time.monotonic())
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return value


def _log_failure(task: asyncio.Future) -> None:
    # A background refresh has no caller to raise to; the stale value stays until the next try.
    if not task.cancelled() and task.exception() is not None:
        logger.warning("cache reload failed: %s", task.exception())
