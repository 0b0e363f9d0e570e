"""An ASGI handler for the API paths that does per request only what the API needs.

Django's own handler, on every request, runs the browser's middleware (each
MiddlewareMixin hook is a hop to a sync thread), starts a new thread for the
request's sync calls (`ThreadSensitiveContext`, joined at the end) and sends
`request_started`/`request_finished` through such hops for their database
housekeeping. Under load the API would queue behind all of it.

The API's views are async, answer JSON and never touch the database on the
event loop: their reads go through the caches in `registry/services`, whose
loaders run in `database_sync_to_async` (connection housekeeping included).
So this handler runs `API_MIDDLEWARE` only, without the signals and the
per-request thread; what it keeps is Django's request, URL routing, views and
responses, and the cancellation of the view when the client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.test.utils import override_settings
from django.urls import set_script_prefix


class APIHandler(ASGIHandler):
    """Django's ASGI handler with `settings.API_MIDDLEWARE`, no request signals, no thread per request."""

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler reads settings.MIDDLEWARE while it builds the chain, once, at start.
        with override_settings(MIDDLEWARE=settings.API_MIDDLEWARE):
            super().load_middleware(is_async)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"The API serves HTTP only, not {scope['type']}.")
        await self.handle(scope, receive, send)

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            set_script_prefix(get_script_prefix(scope))
            request, refusal = self.create_request(scope, body_file)
            if refusal is not None:  # an undecodable path or a body over Django's limits
                await self.send_response(refusal, send)
                return
            # Not `response.close()`: it would send request_finished, and the API's responses
            # hold nothing else to release (send_response closes a stream's iterator itself).
            await self._respond(request, receive, send)
        finally:
            body_file.close()

    async def _respond(self, request: Any, receive: Any, send: Any) -> None:
        """Answer `request`; if the client disconnects first, cancel the view (it aborts its work)."""
        answer = asyncio.create_task(self._answer(request, send))
        disconnect = asyncio.create_task(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait((answer, disconnect), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (disconnect, answer):
                task.cancel()
            await asyncio.gather(disconnect, answer, return_exceptions=True)
        if not answer.cancelled():
            answer.result()  # our own failure, if any, reaches daphne's log

    async def _answer(self, request: Any, send: Any) -> None:
        response = await self.run_get_response(request)
        try:
            with contextlib.suppress(asyncio.CancelledError):  # the client left while it was being sent
                await self.send_response(response, send)
        finally:
            # A stream whose client left before its first byte was never iterated: end it here.
            close_stream = getattr(response, "close_stream", None)
            if close_stream is not None:
                await close_stream()


def route_by_path(prefixes: tuple[str, ...], api_app: Any, default_app: Any) -> Any:
    """An ASGI app that sends HTTP requests under `prefixes` to `api_app`, the rest to `default_app`."""

    async def app(scope: dict, receive: Any, send: Any) -> None:
        target = api_app if scope["path"].startswith(prefixes) else default_app
        await target(scope, receive, send)

    return app
