"""The rate limits' per-minute counts: in memory (embedded) and in the real Redis (production)."""

from __future__ import annotations

import pytest
import redis

from portal.api.rate_counts import MemoryCounts, RedisCounts, rate_counts

REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL).flushdb()
    except redis.ConnectionError:
        pytest.skip("Redis is not answering at 127.0.0.1:6379")
    return REDIS_URL


async def test_memory_counts_add_up_per_name_and_minute():
    counts = MemoryCounts()
    assert [await counts.add("rpm:1", 100, 1) for _ in range(3)] == [1, 2, 3]
    assert await counts.add("tpm:1", 100, 40) == 40
    assert await counts.get("tpm:1", 100) == 40
    assert await counts.get("rpm:1", 101) == 0
    assert await counts.add("rpm:1", 101, 1) == 1


async def test_memory_counts_forget_minutes_before_the_previous_one():
    counts = MemoryCounts()
    await counts.add("rpm:1", 100, 5)
    await counts.add("rpm:1", 101, 1)
    assert await counts.get("rpm:1", 100) == 5  # the previous minute is kept
    await counts.add("rpm:1", 102, 1)
    assert await counts.get("rpm:1", 100) == 0


async def test_redis_counts_are_shared_between_portal_copies_and_expire(redis_url):
    first, second = RedisCounts(redis_url), RedisCounts(redis_url)
    assert await first.add("rpm:7", 100, 1) == 1
    assert await second.add("rpm:7", 100, 1) == 2
    assert await first.get("rpm:7", 100) == 2
    assert await second.get("rpm:7", 99) == 0
    ttl = int(redis.Redis.from_url(redis_url).ttl("portal:rate:rpm:7:100"))  # type: ignore[arg-type]
    assert 0 < ttl <= 120


async def test_rate_counts_use_redis_when_redis_url_is_set(settings, redis_url):
    settings.REDIS_URL = None
    assert isinstance(rate_counts(), MemoryCounts)
    settings.REDIS_URL = redis_url
    counts = rate_counts()
    assert isinstance(counts, RedisCounts)
    await counts.add("rpm:8", 5, 3)
    stored = redis.Redis.from_url(redis_url).get("portal:rate:rpm:8:5")
    assert stored == b"3"
