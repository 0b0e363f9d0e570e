"""An ASGI handler for the API paths, without the browser's middleware.

Every Django middleware built on MiddlewareMixin runs its hooks through
Django's one sync thread (a `sync_to_async` hop each way), so under load the
API would queue behind sessions, CSRF and messages it never uses. The API
authenticates by key and answers JSON: it runs with `API_MIDDLEWARE` only.
"""

from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.test.utils import override_settings


class APIHandler(ASGIHandler):
    """Django's ASGI handler with `settings.API_MIDDLEWARE` instead of `MIDDLEWARE`."""

    def load_middleware(self, is_async: bool = False) -> None:
        # BaseHandler reads settings.MIDDLEWARE while it builds the chain, once, at start.
        with override_settings(MIDDLEWARE=settings.API_MIDDLEWARE):
            super().load_middleware(is_async)


def route_by_path(prefixes: tuple[str, ...], api_app: Any, default_app: Any) -> Any:
    """An ASGI app that sends HTTP requests under `prefixes` to `api_app`, the rest to `default_app`."""

    async def app(scope: dict, receive: Any, send: Any) -> None:
        target = api_app if scope["path"].startswith(prefixes) else default_app
        await target(scope, receive, send)

    return app
