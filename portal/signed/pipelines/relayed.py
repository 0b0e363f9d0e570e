"""What the chat and embedding pipelines share: the call through the gateway.

The gateway admits the body as the app (one resolve, one parse, the app's
limits reserved) and owns dispatch, failover, cancellation and the usage
record; here its errors become pipeline errors: a request the gateway
refuses (400, 404) is a parameter refusal (9701), a timeout is 9997,
anything else 9998. A limit's refusal (LimitExceeded) passes as it is: the
service answers it (9807).
"""

from __future__ import annotations

from typing import Any, ClassVar

from portal.gateway.caller import Caller
from portal.gateway.errors import GatewayError
from portal.gateway.gateway import current
from portal.signed.pipelines.base import (
    InferenceFailed,
    InferenceTimedOut,
    ParamsRefused,
    Pipeline,
    PipelineContext,
)
from registry.models import ServedModel


class Relayed(Pipeline):
    """A pipeline answered by a worker through the gateway, which reserves it against the app's quota."""

    reserves_itself: ClassVar[bool] = True


async def default_model(task: str) -> str:
    """Return the only enabled model for `task`; with none or several, the caller must name one."""
    names = [
        name
        async for name in ServedModel.objects.filter(enabled=True, task=task).values_list("name", flat=True)[
            :2
        ]
    ]
    if len(names) != 1:
        raise ParamsRefused("model is required: name one of the served models")
    return names[0]


async def call_relay(door: str, body: dict[str, Any], *, context: PipelineContext) -> dict[str, Any]:
    """Send `body` through the gateway's `door` as the app, mapping gateway errors to pipeline errors."""
    caller = Caller(
        source="signed",
        app_credential_id=context.app_credential_id,
        team_id=context.team_id,
        quota=context.quota,
        log_days=context.log_days,
    )
    gateway = current()
    try:
        return await gateway.run(await gateway.admit(door, caller, body, request_id=context.request_id))
    except GatewayError as exc:
        if exc.status_code == 504:
            raise InferenceTimedOut(exc.message) from exc
        if 400 <= exc.status_code < 500:
            raise ParamsRefused(exc.message) from exc
        raise InferenceFailed(exc.message) from exc
