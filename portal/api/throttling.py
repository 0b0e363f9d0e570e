"""Per-key limits of the OpenAI API: requests and tokens per minute, requests in flight.

A DRF-style policy over `portal.gateway.limits`, the limiter every door
shares: it reserves the request against the key's quota before dispatch and
answers a refusal in OpenAI's shape (429, Retry-After when waiting helps).
The relay settles the reservation when the request ends.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from portal.api.errors import rate_limited
from portal.gateway.gateway import current
from portal.gateway.limits import LimitExceeded, Quota, Reservation, TokenEstimate, estimate, reserve
from registry.services.dispatch import ResolvedModel
from registry.services.keys import KeyInfo


def key_quota(key: KeyInfo) -> Quota:
    return Quota(
        subject=f"key:{key.id}",
        requests_per_minute=key.requests_per_minute,
        tokens_per_minute=key.tokens_per_minute,
        max_in_flight=key.max_in_flight,
    )


class KeyRateThrottle:
    """Reserve a request against its key's limits, or refuse it with 429."""

    async def reserve(
        self, key: KeyInfo, body: dict[str, Any] | None = None, model: ResolvedModel | None = None
    ) -> Reservation:
        """Reserve `body` (nothing to generate when None) with `model`'s defaults for max_tokens."""
        cost = TokenEstimate() if body is None else estimate(body, model.default_params if model else None)
        if model is not None:
            cost = replace(cost, model=model.name)  # refusals are counted against the model
        try:
            return await reserve(current().limits, key_quota(key), cost)
        except LimitExceeded as exc:
            raise rate_limited(exc.message, retry_after=exc.retry_after, param=exc.param) from None
