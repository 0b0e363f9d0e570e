"""The timestamp window, the replay guard and the per-app limits.

go-infer only checks the window; within it, an exact replay of an accepted
signature is refused too, by `portal.signed.replay` (a database table shared
by every portal copy, with or without Redis).
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings

from portal.gateway.gateway import current
from portal.gateway.limits import LimitExceeded, Quota, Reservation, estimate, reserve
from portal.signed.envelope import Code, SignedApiError
from portal.signed.replay import refuse_replay
from registry.services.credentials import CredentialSnapshot


def check_timestamp(timestamp: int, *, now: float | None = None) -> None:
    """Refuse a request whose timestamp is further than SIGNED_TIMESTAMP_WINDOW from now."""
    current = time.time() if now is None else now
    if abs(current - timestamp) > settings.SIGNED_TIMESTAMP_WINDOW:
        raise SignedApiError(
            Code.TIMESTAMP_OUTSIDE_WINDOW,
            f"timestamp is more than {settings.SIGNED_TIMESTAMP_WINDOW} seconds from the server time",
        )


async def admit(*, app_id: str, replay_key: str | None) -> None:
    """Remember the signature, refusing a replay."""
    if replay_key is not None:
        await refuse_replay(app_id=app_id, replay_key=replay_key)


def app_quota(credential: CredentialSnapshot) -> Quota:
    """The app's limits: requests and tokens per minute, requests in flight."""
    return Quota(
        subject=f"app:{credential.id}",
        requests_per_minute=credential.requests_per_minute,
        tokens_per_minute=credential.tokens_per_minute,
        max_in_flight=credential.max_in_flight,
        budgets=credential.budgets,
    )


def rate_limited(exc: LimitExceeded) -> SignedApiError:
    """A limit's refusal as code 9807."""
    later = f" (retry in {exc.retry_after} s)" if exc.retry_after else ""
    return SignedApiError(Code.RATE_LIMITED, exc.message + later)


async def reserve_for_app(credential: CredentialSnapshot, params: dict[str, Any]) -> Reservation:
    """Reserve a pipeline that does not reserve itself against the app's limits (`portal.gateway.limits`).

    The tokens are the parameters' prompt bound (they generate nothing); a
    pipeline relayed to a worker is reserved by the gateway when it admits it.
    """
    try:
        return await reserve(current().limits, app_quota(credential), estimate(params))
    except LimitExceeded as exc:
        raise rate_limited(exc) from None
