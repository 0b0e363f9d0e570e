"""The HTTP plumbing of the worker's app: reading bodies, request ids, errors, disconnects.

Kept apart from the handlers (app.py) so each stays short; no engine here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from inference.errors import EngineError, InvalidRequest
from inference.worker.auth import valid_request_id
from inference.worker.protocol import error_body, new_id
from inference.worker.serving import engine_failure

logger = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]
MAX_BODY_BYTES = 32 * 1024 * 1024  # the portal sends at most GATEWAY_MAX_BODY_BYTES (4 MiB)


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


class BodyTooLarge(InvalidRequest):
    status_code = 413


def error_json(exc: EngineError) -> dict[str, Any]:
    code = getattr(exc, "code", None) or ("queue_full" if exc.status_code == 503 else None)
    return error_body(str(exc), error_type=exc.error_type, param=getattr(exc, "field", None), code=code)


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: an error may quote a client's lone surrogate (not UTF-8)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def error_response(exc: EngineError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status_code == 503 else None
    return AsciiJSONResponse(error_json(exc), status_code=exc.status_code, headers=headers)


def openai_errors(handler: Handler) -> Handler:
    """Turn every exception into OpenAI's error body; unexpected ones are a logged 500."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except EngineError as exc:
            return error_response(exc)
        except ClientGone:
            return Response(status_code=499)
        except Exception as exc:
            logger.exception("Request failed: %s %s", request.method, request.url.path)
            return error_response(engine_failure(exc))

    return wrapper


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object; 400 for anything else (deep nesting included), 413 past the cap."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes.")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("The request body is not valid JSON.") from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


def request_id_of(request: Request) -> str:
    """The portal's id for this request (X-Request-Id), or a new one; 400 if it is malformed."""
    request_id = request.headers.get("x-request-id")
    if request_id is None:
        return new_id("req")
    if not valid_request_id(request_id):
        raise InvalidRequest(
            "'X-Request-Id' must be 1 to 64 characters of letters, digits and . _ : -", field="X-Request-Id"
        )
    return request_id


async def until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`, cancelling it if the client disconnects first (then raise ClientGone)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.cancelled():
        raise ClientGone
    return task.result()
