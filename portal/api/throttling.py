"""Per-key rate limits (requests and tokens per minute).

Counted by `rate_counts` (Redis with REDIS_URL, so every portal process shares
them). A fixed one-minute window: cheap, and good enough for quotas.
"""

from __future__ import annotations

import time

from django.http import HttpRequest

from portal.api.errors import rate_limited
from portal.api.rate_counts import WINDOW_SECONDS, rate_counts
from registry.services.keys import KeyInfo


def _window() -> tuple[int, int]:
    """The current window number and the seconds until the next one."""
    now = time.time()
    return int(now // WINDOW_SECONDS), int(WINDOW_SECONDS - now % WINDOW_SECONDS) + 1


class KeyRateThrottle:
    """Refuse a request with 429 once its key has used its requests or tokens for this minute."""

    async def allow_request(self, request: HttpRequest, key: KeyInfo) -> None:
        if not key.requests_per_minute and not key.tokens_per_minute:
            return
        window, retry_after = _window()
        if key.requests_per_minute:
            count = await rate_counts().add(f"rpm:{key.id}", window, 1)
            if count > key.requests_per_minute:
                raise rate_limited(
                    f"Rate limit reached: {key.requests_per_minute} requests per minute.",
                    retry_after=retry_after,
                )
        if key.tokens_per_minute:
            used = await rate_counts().get(f"tpm:{key.id}", window)
            if used >= key.tokens_per_minute:
                raise rate_limited(
                    f"Rate limit reached: {key.tokens_per_minute} tokens per minute.", retry_after=retry_after
                )

    async def record_tokens(self, key: KeyInfo, tokens: int) -> None:
        """Count a finished request's tokens against its key's minute."""
        if key.tokens_per_minute and tokens > 0:
            await rate_counts().add(f"tpm:{key.id}", _window()[0], tokens)
