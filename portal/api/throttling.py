"""Per-key rate limits (requests and tokens per minute), counted in the Django cache.

With REDIS_URL set the cache is Redis, so every portal process shares the
counts. A fixed one-minute window: cheap, and good enough for quotas.
"""

from __future__ import annotations

import time

from django.core.cache import cache
from django.http import HttpRequest

from portal.api.errors import rate_limited
from registry.services.keys import KeyInfo

WINDOW = 60


def _window() -> tuple[int, int]:
    """The current window number and the seconds until the next one."""
    now = time.time()
    return int(now // WINDOW), int(WINDOW - now % WINDOW) + 1


async def _add(key: str, amount: int) -> int:
    await cache.aadd(key, 0, timeout=WINDOW * 2)
    try:
        return int(await cache.aincr(key, amount))
    except ValueError:  # expired between add and incr
        await cache.aset(key, amount, timeout=WINDOW * 2)
        return amount


class KeyRateThrottle:
    """Refuse a request with 429 once its key has used its requests or tokens for this minute."""

    async def allow_request(self, request: HttpRequest, key: KeyInfo) -> None:
        if not key.requests_per_minute and not key.tokens_per_minute:
            return
        window, retry_after = _window()
        if key.requests_per_minute:
            count = await _add(f"gw:rpm:{key.id}:{window}", 1)
            if count > key.requests_per_minute:
                raise rate_limited(
                    f"Rate limit reached: {key.requests_per_minute} requests per minute.",
                    retry_after=retry_after,
                )
        if key.tokens_per_minute:
            used = int(await cache.aget(f"gw:tpm:{key.id}:{window}", 0))
            if used >= key.tokens_per_minute:
                raise rate_limited(
                    f"Rate limit reached: {key.tokens_per_minute} tokens per minute.", retry_after=retry_after
                )

    async def record_tokens(self, key: KeyInfo, tokens: int) -> None:
        """Count a finished request's tokens against its key's minute."""
        if key.tokens_per_minute and tokens > 0:
            await _add(f"gw:tpm:{key.id}:{_window()[0]}", tokens)
