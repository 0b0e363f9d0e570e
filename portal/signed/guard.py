"""The timestamp window, the replay guard and the per-app rate limit.

go-infer only checks the window; within it, an exact replay of an accepted
signature is refused too, by `portal.signed.replay` (a database table shared
by every portal copy, with or without Redis).
"""

from __future__ import annotations

import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache

from portal.signed.envelope import Code, SignedApiError
from portal.signed.replay import refuse_replay


def check_timestamp(timestamp: int, *, now: float | None = None) -> None:
    """Refuse a request whose timestamp is further than SIGNED_TIMESTAMP_WINDOW from now."""
    current = time.time() if now is None else now
    if abs(current - timestamp) > settings.SIGNED_TIMESTAMP_WINDOW:
        raise SignedApiError(
            Code.TIMESTAMP_OUTSIDE_WINDOW,
            f"timestamp is more than {settings.SIGNED_TIMESTAMP_WINDOW} seconds from the server time",
        )


def _admit(app_id: str, requests_per_minute: int | None) -> None:
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
    """Remember the signature (refusing a replay), then count the request."""
    if replay_key is not None:
        await refuse_replay(app_id=app_id, replay_key=replay_key)
    await sync_to_async(_admit, thread_sensitive=False)(app_id, requests_per_minute)
