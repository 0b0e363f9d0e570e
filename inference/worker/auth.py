"""Who may call a worker: the portal, which presents the shared WORKER_TOKEN.

A pure ASGI middleware, so every route (present and future) is covered and a
refused request never reaches a handler. `/health` stays open: load
balancers, the agent and the worker's own start-up self-check probe it.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from typing import Any

from starlette.responses import JSONResponse

from inference.worker.protocol import error_body

OPEN_PATHS = frozenset({"/health"})
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the port on this machine (a name other than localhost: no)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def valid_request_id(value: str) -> bool:
    """Ids the portal makes: short, and safe in a URL path and a log line."""
    return REQUEST_ID.fullmatch(value) is not None


def bearer_matches(header: bytes | None, token: str) -> bool:
    """Compare `Authorization: Bearer <token>` in constant time."""
    if not header:
        return False
    scheme, _, presented = header.partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(presented.strip(), token.encode())


class RequireToken:
    """Answer 401 in OpenAI's error shape unless the caller presents the worker token.

    `fallbacks` are earlier tokens still accepted while a rotation is under way
    (WORKER_TOKEN_FALLBACKS, like Django's SECRET_KEY_FALLBACKS).
    """

    def __init__(self, app: Any, token: str | None, fallbacks: tuple[str, ...] = ()) -> None:
        self.app = app
        self.token = token
        self.accepted = (token, *fallbacks) if token else ()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.token is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization")
        # Every token is compared, so the time taken does not tell which one nearly matched.
        if sum(bearer_matches(header, token) for token in self.accepted):
            await self.app(scope, receive, send)
            return
        body = error_body(
            "This worker answers only the portal: send 'Authorization: Bearer <WORKER_TOKEN>'.",
            error_type="authentication_error",
            code="invalid_worker_token",
        )
        response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
