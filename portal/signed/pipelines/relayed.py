"""What the chat and embedding pipelines share: the call through the gateway relay.

The relay owns dispatch, failover, cancellation and the usage record; here its
errors become pipeline errors: a request the gateway refuses (400, 404) is a
parameter refusal (9701), a timeout is 9997, anything else 9998.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from portal.gateway.relay import Caller, GatewayError
from portal.signed.pipelines.base import InferenceFailed, InferenceTimedOut, ParamsRefused, PipelineContext
from registry.models import ServedModel

RelayCall = Callable[..., Awaitable[dict[str, Any]]]


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


async def call_relay(call: RelayCall, body: dict[str, Any], *, context: PipelineContext) -> dict[str, Any]:
    """Send `body` through the relay as the app, mapping gateway errors to pipeline errors."""
    caller = Caller(source="signed", app_credential_id=context.app_credential_id)
    try:
        return await call(body, caller=caller, request_id=context.request_id)
    except GatewayError as exc:
        if exc.status_code == 504:
            raise InferenceTimedOut(exc.message) from exc
        if 400 <= exc.status_code < 500:
            raise ParamsRefused(exc.message) from exc
        raise InferenceFailed(exc.message) from exc
