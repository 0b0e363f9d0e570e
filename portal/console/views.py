"""The dashboard page and its JSON (the fallback when the websocket is down). Staff only."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse

from portal.console.fleet import fleet_snapshot


@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    context = {**admin.site.each_context(request), "title": "Fleet dashboard", "snapshot": fleet_snapshot()}
    return TemplateResponse(request, "console/dashboard.html", context)


@staff_member_required
def fleet(request: HttpRequest) -> HttpResponse:
    return JsonResponse(fleet_snapshot())
