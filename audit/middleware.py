"""Admin requests act for their user: a change they make is recorded in the audit trail."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest

from audit.context import Acting, acting
from audit.models import AuditSource

ADMIN_PREFIX = "/admin/"


class AdminActorMiddleware:
    """Set the acting admin request for the view; its user is read only when a change is recorded."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        if not request.path.startswith(ADMIN_PREFIX):
            return self.get_response(request)
        with acting(Acting(AuditSource.ADMIN, request=request)):
            return self.get_response(request)

    async def _acall(self, request: HttpRequest) -> Any:
        respond: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
        if not request.path.startswith(ADMIN_PREFIX):
            return await respond(request)
        with acting(Acting(AuditSource.ADMIN, request=request)):
            return await respond(request)
