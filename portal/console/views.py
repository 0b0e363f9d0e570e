"""The dashboard page and its JSON (the fallback when the websocket is down): staff who may see workers."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse

from portal.console.fleet import fleet_snapshot
from teams.roles import CONSOLE_PERMISSION
from teams.scoping import usage_scope


def console_view(view: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    """The admin's staff gate (its login page), then the console's permission (every role has it)."""

    @wraps(view)
    def checked(request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm(CONSOLE_PERMISSION):
            raise PermissionDenied
        return view(request)

    return staff_member_required(checked)


@console_view
def dashboard(request: HttpRequest) -> HttpResponse:
    snapshot = fleet_snapshot(usage_scope(request.user))
    context = {**admin.site.each_context(request), "title": "Fleet dashboard", "snapshot": snapshot}
    return TemplateResponse(request, "console/dashboard.html", context)


@console_view
def fleet(request: HttpRequest) -> HttpResponse:
    return JsonResponse(fleet_snapshot(usage_scope(request.user)))
