"""The registry version: how an admin change reaches every portal's in-process caches.

Each portal caches models, workers, keys and credentials in its own memory
(`RefreshingCache`). A change made in the admin bumps one counter in the
shared cache (Redis when `REDIS_URL` is set); every portal compares it with
the value it last saw at most once a second, on the request path but off the
event loop, and forgets its cached lookups when it moved. Without Redis the
cache is per process, which is right for the single portal of the embedded
default.
"""

from __future__ import annotations

import logging
import time

from asgiref.sync import sync_to_async
from django.core.cache import cache

from registry.services.cache import forget_all

logger = logging.getLogger(__name__)

VERSION_KEY = "registry:version"
CHECK_SECONDS = 1.0


def read_version() -> int:
    return int(cache.get(VERSION_KEY) or 0)


def bump_version() -> None:
    """Record that the registry changed, and forget this process's cached lookups at once."""
    try:
        cache.incr(VERSION_KEY)
    except ValueError:  # no counter yet (or it was evicted)
        cache.add(VERSION_KEY, 1, timeout=None)
    forget_cached_lookups()


def forget_cached_lookups() -> None:
    forget_all()


class VersionWatch:
    """Forget cached lookups when another process bumped the version; checks at most once a second.

    The portal's gateway holds one and checks it before a request's lookups.
    """

    def __init__(self) -> None:
        self._seen: int | None = None
        self._checked_at = float("-inf")

    async def check(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < CHECK_SECONDS:
            return
        self._checked_at = now
        try:
            version = await sync_to_async(read_version, thread_sensitive=False)()
        except Exception as exc:  # the cache being down must not fail a request
            logger.warning("Registry version unreadable: %s", exc)
            return
        if self._seen is not None and version != self._seen:
            forget_cached_lookups()
        self._seen = version
