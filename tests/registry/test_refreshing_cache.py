"""RefreshingCache: fresh hits, stale-while-reloading, single-flight loads."""

import asyncio

import pytest
from django.db import OperationalError

from registry.services.cache import RefreshingCache


class Source:
    """A loader that counts its calls and can be held back."""

    def __init__(self) -> None:
        self.calls = 0
        self.value = "v1"
        self.gate = asyncio.Event()
        self.gate.set()

    async def load(self, key: object) -> str:
        self.calls += 1
        await self.gate.wait()
        return f"{key}:{self.value}"


def make(source: Source, ttl: float, max_stale: float) -> RefreshingCache[str]:
    return RefreshingCache(source.load, ttl=lambda: ttl, max_stale=lambda: max_stale)


async def test_fresh_value_is_served_without_loading_again():
    source = Source()
    cache = make(source, ttl=60, max_stale=120)
    assert await cache.get("k") == "k:v1"
    assert await cache.get("k") == "k:v1"
    assert source.calls == 1


async def test_concurrent_misses_share_one_load():
    source = Source()
    source.gate.clear()
    cache = make(source, ttl=60, max_stale=120)
    waiting = [asyncio.create_task(cache.get("k")) for _ in range(10)]
    await asyncio.sleep(0.01)
    source.gate.set()
    assert await asyncio.gather(*waiting) == ["k:v1"] * 10
    assert source.calls == 1


async def test_stale_value_is_served_while_one_reload_runs():
    source = Source()
    cache = make(source, ttl=0.0, max_stale=60)
    await cache.get("k")
    source.value, source.calls = "v2", 0
    source.gate.clear()
    # Expired but within max_stale: answered at once with the old value, reloading behind.
    assert await asyncio.wait_for(cache.get("k"), 0.5) == "k:v1"
    assert await asyncio.wait_for(cache.get("k"), 0.5) == "k:v1"
    source.gate.set()
    await asyncio.sleep(0.01)
    assert source.calls == 1
    assert await cache.get("k") in {"k:v2"}


async def test_an_expired_value_marked_reload_first_waits_for_the_reload():
    # The worker lists' rule: an expired empty list is never served; a full one is, reloading behind.
    source = Source()
    cache = RefreshingCache(
        source.load, ttl=lambda: 0.0, max_stale=lambda: 60, reload_first=lambda v: v == "k:v1"
    )
    await cache.get("k")
    source.value = "v2"
    assert await cache.get("k") == "k:v2"
    source.value = "v3"
    assert await cache.get("k") == "k:v2"


async def test_value_older_than_max_stale_waits_for_the_load():
    source = Source()
    cache = make(source, ttl=0.0, max_stale=0.0)
    await cache.get("k")
    source.value = "v2"
    assert await cache.get("k") == "k:v2"


async def test_failed_load_raises_to_a_waiting_caller():
    async def broken(key: object) -> str:
        raise RuntimeError("database down")

    cache: RefreshingCache[str] = RefreshingCache(broken, ttl=lambda: 1, max_stale=lambda: 2)
    with pytest.raises(RuntimeError, match="database down"):
        await cache.get("k")


async def test_distinct_keys_evict_the_least_recently_used_one_at_a_time():
    source = Source()
    cache: RefreshingCache[str] = RefreshingCache(
        source.load, ttl=lambda: 60, max_stale=lambda: 120, max_entries=3
    )
    for key in ("a", "b", "c"):
        await cache.get(key)
    await cache.get("a")  # used again: now the most recent
    await cache.get("d")
    assert len(cache) == 3
    assert ("a" in cache, "b" in cache, "c" in cache, "d" in cache) == (True, False, True, True)
    for i in range(100):
        await cache.get(f"random-{i}")
    assert len(cache) == 3


async def test_while_the_database_is_away_a_value_past_max_stale_is_served_and_a_miss_fails():
    source = Source()
    cache = make(source, ttl=0.0, max_stale=0.0)
    assert await cache.get("k") == "k:v1"

    async def away(key: object) -> str:
        raise OperationalError("the database is restarting")

    cache._load = away
    assert await cache.get("k") == "k:v1"  # the last value known
    with pytest.raises(OperationalError):
        await cache.get("other")  # nothing known: the failure is the caller's to answer
