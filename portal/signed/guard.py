"""The timestamp window, the replay guard and the per-app rate limit.

go-infer only checks the window; within it, an exact replay of an accepted
signature is refused too. Accepted signatures are remembered in the Django
cache (Redis when REDIS_URL is set, so every portal copy shares them) for twice
the window, which covers a timestamp at either edge of it.
"""

from __future__ import annotations

import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache

from portal.signed.envelope import Code, SignedApiError


def check_timestamp(timestamp: int, *, now: float | None = None) -> None:
    """Refuse a request whose timestamp is further than SIGNED_TIMESTAMP_WINDOW from now."""
    current = time.time() if now is None else now
    if abs(current - timestamp) > settings.SIGNED_TIMESTAMP_WINDOW:
        raise SignedApiError(
            Code.TIMESTAMP_OUTSIDE_WINDOW,
            f"timestamp is more than {settings.SIGNED_TIMESTAMP_WINDOW} seconds from the server time",
        )


def _admit(app_id: str, replay_key: str | None, requests_per_minute: int | None) -> None:
    if replay_key is not None:
        ttl = 2 * int(settings.SIGNED_TIMESTAMP_WINDOW)
        # add() is atomic: of two identical requests racing, exactly one wins.
        if not cache.add(f"signed:seen:{app_id}:{replay_key}", 1, timeout=ttl):
            raise SignedApiError(Code.REPLAYED, "this signed request was already accepted (replay)")
    if requests_per_minute:
        key = f"signed:rpm:{app_id}:{int(time.time() // 60)}"
        cache.add(key, 0, timeout=120)
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.add(key, 1, timeout=120)
            count = 1
        if count > requests_per_minute:
            raise SignedApiError(
                Code.RATE_LIMITED, f"rate limit of {requests_per_minute} requests per minute reached"
            )


async def admit(*, app_id: str, replay_key: str | None, requests_per_minute: int | None) -> None:
    """Remember the signature (refusing a replay) and count the request; one thread hop for both."""
    await sync_to_async(_admit, thread_sensitive=False)(app_id, replay_key, requests_per_minute)
