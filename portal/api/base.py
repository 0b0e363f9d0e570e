"""OpenAIView: a lean async request lifecycle for `/v1`, with DRF-style policy classes.

It subclasses DRF's APIView so that drf-spectacular documents the endpoints,
but runs its own async `dispatch`: adrf would run the whole `initial()` step
through Django's single sync thread, on every request. Here authentication,
throttling and the model permission are awaited on the event loop, and every
failure is answered in OpenAI's error shape.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from rest_framework.views import APIView

from portal.api.authentication import ApiKeyAuthentication
from portal.api.errors import error_response, forbidden, too_large
from portal.api.throttling import KeyRateThrottle
from portal.gateway.caller import Caller, new_request_id
from portal.gateway.errors import GatewayError, invalid
from portal.gateway.prepare import resolve_requested_model
from registry.services.keys import KeyInfo

logger = logging.getLogger(__name__)


class OpenAIView(APIView):
    """Base of the `/v1` views: subclasses implement async `get`/`post` using `self.key`."""

    authentication_classes = [ApiKeyAuthentication]  # type: ignore[list-item]
    throttle_classes = [KeyRateThrottle]  # type: ignore[list-item]
    permission_classes = []

    key: KeyInfo
    request_id: str

    async def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:  # type: ignore[override]
        self.request_id = request.headers.get("X-Request-Id", "")[:64] or new_request_id()
        try:
            handler = getattr(self, request.method.lower(), None) if request.method else None
            if handler is None:
                message = f"Method {request.method} is not allowed here."
                raise GatewayError(message, status_code=405, code="method_not_allowed")
            self.key = await ApiKeyAuthentication().authenticate(request)
            await self.throttle.allow_request(request, self.key)
            response = await handler(request, *args, **kwargs)
        except GatewayError as exc:
            response = error_response(exc)
        except Exception:
            # Our own bug, not the client's: logged with the request id, answered in OpenAI's shape.
            logger.exception("request %s failed", self.request_id)
            response = error_response(
                GatewayError("Internal error.", status_code=500, error_type="server_error")
            )
        response["X-Request-Id"] = self.request_id
        return response

    @property
    def throttle(self) -> KeyRateThrottle:
        return KeyRateThrottle()

    @property
    def caller(self) -> Caller:
        return Caller(source="api", api_key_id=self.key.id)

    def read_body(self, request: HttpRequest) -> dict[str, Any]:
        """The JSON object of the body; 413 when too large, 400 when it is not one.

        Its fields are checked once, by the relay (`portal/gateway/prepare.py`), for every
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
            body = json.loads(request.body or b"null")
        except RequestDataTooBig:
            raise too_large(limit) from None
        except ValueError:
            raise invalid("The request body is not valid JSON.", param=None) from None
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object.", param=None)
        return body

    async def check_model(self, body: dict[str, Any]) -> None:
        """404 for an unknown model, 403 for one this key may not use."""
        model = await resolve_requested_model(body)
        if not self.key.allows(model.id):
            raise forbidden(f"This API key may not use the model '{body['model']}'.")

    async def record_tokens(self, usage: Any) -> None:
        if isinstance(usage, dict) and self.key.tokens_per_minute:
            total = int(usage.get("total_tokens") or 0) or int(usage.get("prompt_tokens") or 0) + int(
                usage.get("completion_tokens") or 0
            )
            await self.throttle.record_tokens(self.key, total)
