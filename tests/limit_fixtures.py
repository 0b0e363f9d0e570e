"""The limiter's store fixture: a plugin the limit and budget test modules name in `pytest_plugins`."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from portal.gateway.gateway import current
from portal.gateway.limit_stores import WINDOW_SECONDS

MARGIN_SECONDS = 5.0


def use_store(request: pytest.FixtureRequest, settings) -> None:
    """Point the settings at an empty Redis database (param "redis") or at none ("memory")."""
    if request.param == "redis":
        settings.REDIS_URL = request.getfixturevalue("redis_url")
        redis.Redis.from_url(settings.REDIS_URL).flushdb()
    else:
        settings.REDIS_URL = None


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest, settings) -> Iterator[str]:
    """Run a test against each store, through the settings that choose it, each from zero."""
    use_store(request, settings)
    current().limits.memory.clear()
    yield request.param
    current().limits.memory.clear()


def tokens_counted(subject: str) -> int:
    """`subject`'s tokens in the memory store this minute and the last: a test may cross a minute."""
    window = int(time.time() // WINDOW_SECONDS)
    return sum(current().limits.memory.used(subject, window=w) for w in (window - 1, window))


def clear_of_a_minute_edge() -> None:
    """Return with at least MARGIN_SECONDS of this minute left: limits count fixed minutes, and a
    test that crossed into the next minute would see its counts start again from zero."""
    left = WINDOW_SECONDS - time.time() % WINDOW_SECONDS
    if left < MARGIN_SECONDS:
        time.sleep(left + 0.05)
