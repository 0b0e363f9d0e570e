"""Per-key limits of the OpenAI API: requests and tokens per minute, requests in flight.

A DRF-style policy over `portal.gateway.limits`, the limiter every door
shares: it reserves the request against the key's quota before dispatch and
answers a refusal in OpenAI's shape (429, Retry-After when waiting helps).
The gateway reserves a request against `quota` when it admits it, and
settles the reservation when the request ends. `OpenAIView.throttle_classes`
names this class: the view takes its policy from there.
"""

from __future__ import annotations

from portal.api.errors import rate_limited
from portal.gateway.errors import GatewayError
from portal.gateway.gateway import current
from portal.gateway.limits import LimitExceeded, Quota, Reservation, TokenEstimate, reserve
from registry.services.keys import KeyInfo


def key_quota(key: KeyInfo) -> Quota:
    return Quota(
        subject=f"key:{key.id}",
        requests_per_minute=key.requests_per_minute,
        tokens_per_minute=key.tokens_per_minute,
        max_in_flight=key.max_in_flight,
        budgets=key.budgets,
    )


class KeyRateThrottle:
    """A key's limits: the quota the gateway reserves a request against, and a refusal's 429."""

    def quota(self, key: KeyInfo) -> Quota:
        return key_quota(key)

    def refusal(self, exc: LimitExceeded) -> GatewayError:
        budget = exc.reason.startswith("budget_")
        return rate_limited(exc.message, retry_after=exc.retry_after, param=exc.param, budget=budget)

    async def reserve(self, key: KeyInfo) -> Reservation:
        """Reserve a request that generates nothing (the model list); the gateway reserves the others."""
        try:
            return await reserve(current().limits, self.quota(key), TokenEstimate())
        except LimitExceeded as exc:
            raise self.refusal(exc) from None
