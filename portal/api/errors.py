"""Error responses for `/v1`: always OpenAI's shape, with honest status codes."""

from __future__ import annotations

import json
from collections.abc import Iterable

from django.http import HttpRequest, HttpResponse

from portal.gateway.errors import GatewayError


def error_response(error: GatewayError) -> HttpResponse:
    """The JSON response for `error`, with Retry-After when the client should come back."""
    response = HttpResponse(
        json.dumps(error.to_openai()), status=error.status_code, content_type="application/json"
    )
    if error.retry_after is not None:
        response["Retry-After"] = str(error.retry_after)
    if error.status_code == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def unauthorized(message: str, code: str) -> GatewayError:
    return GatewayError(message, status_code=401, error_type="invalid_request_error", code=code)


def forbidden(message: str, *, param: str | None = "model") -> GatewayError:
    return GatewayError(
        message, status_code=403, error_type="permission_error", param=param, code="forbidden"
    )


def too_large(limit: int) -> GatewayError:
    return GatewayError(
        f"The request body is larger than {limit} bytes.", status_code=413, code="request_too_large"
    )


def rate_limited(
    message: str, *, retry_after: int | None, param: str | None = None, budget: bool = False
) -> GatewayError:
    """429; without `retry_after` when waiting cannot help (the request alone exceeds the limit).

    A budget's refusal (`budget`) has its own code: waiting a minute does not help.
    """
    if budget:
        code = "budget_exceeded"
    else:
        code = "rate_limit_exceeded" if retry_after is not None else "request_exceeds_limit"
    return GatewayError(
        message,
        status_code=429,
        error_type="rate_limit_error",
        param=param,
        code=code,
        retry_after=retry_after,
    )


def method_not_allowed(request: HttpRequest, allowed: Iterable[str]) -> HttpResponse:
    """405 in OpenAI's shape, with the `Allow` header that RFC 9110 asks of every 405."""
    message = f"Method {request.method} is not allowed here."
    response = error_response(GatewayError(message, status_code=405, code="method_not_allowed"))
    response["Allow"] = ", ".join(allowed)
    return response


def allowed_methods(allowed: Iterable[str]) -> HttpResponse:
    """The answer to OPTIONS: no body, the methods in `Allow` (no key needed, as for a CORS preflight)."""
    response = HttpResponse(status=204)
    response["Allow"] = ", ".join(allowed)
    return response


async def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """Unknown `/v1` paths answer in OpenAI's shape too, not with Django's HTML page."""
    message = f"Unknown endpoint: {request.method} {request.path}"
    return error_response(GatewayError(message, status_code=404, code="unknown_url"))
