"""OpenAIView: a lean async request lifecycle for `/v1`, with DRF-style policy classes.

It subclasses DRF's APIView so that drf-spectacular documents the endpoints
(its security scheme comes from `authentication_classes`, which the view's
`dispatch` uses too, as it uses `throttle_classes`), but runs its own async
`dispatch`: adrf would run the whole `initial()` step
through Django's single sync thread, on every request. Here authentication,
the key's limits and the model permission are awaited on the event loop, and
every failure is answered in OpenAI's error shape.

A handler admits its body through the gateway (`admit`: the model resolved
and permitted, the key's limits reserved, the body parsed, once each); the
gateway settles the reservation when the request ends. A request without a
body (the model list) reserves through `reserve`, and `dispatch` releases it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from rest_framework.views import APIView

from portal.api.authentication import ApiKeyAuthentication
from portal.api.errors import allowed_methods, error_response, method_not_allowed, too_large
from portal.api.throttling import KeyRateThrottle
from portal.gateway.caller import Caller, new_request_id
from portal.gateway.errors import GatewayError, invalid
from portal.gateway.gateway import current
from portal.gateway.limits import LimitExceeded, Reservation
from portal.gateway.prepare import Prepared
from registry.services.keys import KeyInfo

logger = logging.getLogger(__name__)
MAX_LABEL_LENGTH = 64


class OpenAIView(APIView):
    """Base of the `/v1` views: subclasses implement async `get`/`post` using `self.key`."""

    authentication_classes = [ApiKeyAuthentication]  # type: ignore[list-item]
    throttle_classes = [KeyRateThrottle]  # type: ignore[list-item]
    permission_classes = []

    key: KeyInfo
    request_id: str
    reservation: Reservation | None

    async def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:  # type: ignore[override]
        # Our id names the request on the worker (and its abort path); the client's is only a label.
        self.request_id = new_request_id()
        self.reservation = None
        try:
            response = await self._respond(request, *args, **kwargs)
        finally:
            if self.reservation is not None and not self.reservation.claimed:
                self.reservation.settle(0)  # refused or answered before the relay took it over
        response["X-Request-Id"] = self.request_id
        headers = request.headers
        label = client_label(headers.get("X-Request-Id") or headers.get("X-Client-Request-Id"))
        if label:
            response["X-Client-Request-Id"] = label
        return response

    async def _respond(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            handler = getattr(self, request.method.lower(), None) if request.method else None
            if request.method == "OPTIONS":  # DRF's own options() is sync and wants its Request
                return allowed_methods(self.allowed_methods)
            if handler is None:
                return method_not_allowed(request, self.allowed_methods)
            self.key = await self.authenticator.authenticate(request)
            return await handler(request, *args, **kwargs)
        except GatewayError as exc:
            return error_response(exc)
        except (OperationalError, InterfaceError):
            # The database is away (restarting, unreachable): the request may succeed in a moment.
            logger.warning("request %s failed: the database is unavailable", self.request_id, exc_info=True)
            return error_response(
                GatewayError(
                    "The database is unavailable; retry shortly.",
                    status_code=503,
                    error_type="service_unavailable",
                    code="database_unavailable",
                    retry_after=2,
                )
            )
        except Exception:
            # Our own bug, not the client's: logged with the request id, answered in OpenAI's shape.
            logger.exception("request %s failed", self.request_id)
            return error_response(GatewayError("Internal error.", status_code=500, error_type="server_error"))

    @property
    def authenticator(self) -> ApiKeyAuthentication:
        """The policy `authentication_classes` names (one: every `/v1` request carries a key)."""
        (policy,) = self.authentication_classes
        return policy()  # type: ignore[return-value]

    @property
    def throttle(self) -> KeyRateThrottle:
        """The policy `throttle_classes` names: the key's quota and its 429."""
        (policy,) = self.throttle_classes
        return policy()  # type: ignore[return-value]

    async def reserve(self) -> None:
        """Reserve this request (it generates nothing) against the key's limits; 429 when one refuses it."""
        self.reservation = await self.throttle.reserve(self.key)

    async def admit(self, door: str, body: dict[str, Any], *, stream: bool) -> Prepared:
        """`body` admitted through the gateway as this key: 403, 404, 400, or 429 in OpenAI's shape."""
        try:
            return await current().admit(door, self.caller, body, stream=stream, request_id=self.request_id)
        except LimitExceeded as exc:
            raise self.throttle.refusal(exc) from None

    @property
    def caller(self) -> Caller:
        key = self.key
        return Caller(
            source="api",
            api_key_id=key.id,
            team_id=key.team_id,
            quota=self.throttle.quota(key),
            allowed_model_ids=key.allowed_model_ids,
            model_first=True,
            queue_priority=key.queue_priority,
            max_queued=key.max_queued,
            log_days=key.log_days,
        )

    def read_body(self, request: HttpRequest) -> dict[str, Any]:
        """The JSON object of the body; 413 when too large, 400 when it is not one.

        Standard JSON only: no NaN or Infinity, no nesting deeper than Python
        parses, no lone surrogates (they cannot be sent on as UTF-8). Its fields
        are checked once, by the gateway (`portal/gateway/prepare.py`), for every
        front door; the views' serializers document them in the schema.
        """
        limit = settings.GATEWAY_MAX_BODY_BYTES
        try:
            length = int(request.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > limit:
            raise too_large(limit)
        try:
            raw = request.body or b"null"
            body = json.loads(raw, parse_constant=_refuse_constant)
            if b"\\ud" in raw or b"\\uD" in raw:
                json.dumps(body, ensure_ascii=False).encode("utf-8")  # a lone surrogate fails here
        except RequestDataTooBig:
            raise too_large(limit) from None
        except RecursionError:
            raise invalid("The request body is nested too deeply.", param=None) from None
        except ValueError:  # UnicodeError included
            raise invalid("The request body is not valid JSON.", param=None) from None
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object.", param=None)
        return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def client_label(value: str | None) -> str:
    """The client's own request id, echoed back if it is short printable ASCII; never sent on."""
    if not value or len(value) > MAX_LABEL_LENGTH or not all(" " < c <= "~" for c in value):
        return ""
    return value
