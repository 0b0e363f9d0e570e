"""The usage page (charts over the daily rollup) and its CSV exports.

Who sees which team's usage is `teams.scoping.usage_scope`: a team's members
their own team's, the platform's staff with the usage permission every team's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET

from portal.console.usage import exports, logs
from portal.console.usage.forms import UsageFilterForm, UsageFilters
from portal.console.usage.logs import LogSearchForm
from portal.console.usage.selectors import filter_choices, usage_charts
from teams.scoping import usage_scope

# Per dimension: its heading and the filter that shows one of its rows alone.
SECTIONS = {
    "teams": ("teams", "team"),
    "keys": ("API keys", "key"),
    "apps": ("app credentials", "app"),
    "users": ("users", "user"),
    "models": ("models", "model"),
}
View = Callable[..., HttpResponseBase]


def staff_view(view: View) -> View:
    """The admin's own gate (staff, else its login page), plus the usage permission or a team."""

    @wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not usage_scope(request.user).allowed:
            raise PermissionDenied
        return view(request, *args, **kwargs)

    return admin.site.admin_view(require_GET(checked))


def scoped(request: HttpRequest, form: UsageFilterForm) -> UsageFilters:
    """The form's filters, narrowed to the user's own team when they may see no other."""
    filters = form.filters()
    team = usage_scope(request.user).team_id
    if team is None:
        return filters
    if filters.team_id not in (None, team):
        raise PermissionDenied
    return replace(filters, team_id=team)


@staff_view
def usage(request: HttpRequest) -> HttpResponse:
    form = UsageFilterForm(request.GET)
    context: dict[str, Any] = {
        **admin.site.each_context(request),
        "title": "Usage",
        "form": form,
        "choices": filter_choices(team_id=usage_scope(request.user).team_id),
        "query": request.GET.urlencode(),
        "retention_days": settings.USAGE_RETENTION_DAYS,
    }
    if form.is_valid():
        filters = scoped(request, form)
        # Show the dates the page uses, defaults included.
        form.data = shown = request.GET.copy()
        shown["start"], shown["end"] = filters.start.isoformat(), filters.end.isoformat()
        charts = usage_charts(filters)
        context.update(filters=filters, totals=charts["totals"], sections=_sections(request, charts["top"]))
        context["chart_data"] = {
            "daily": charts["daily"],
            "top": {
                name: {
                    "labels": [row["label"] for row in rows],
                    "values": [row[filters.rank] for row in rows],
                }
                for name, rows in charts["top"].items()
            },
            "rank": filters.rank,
        }
    return TemplateResponse(request, "console/usage.html", context)


def _sections(request: HttpRequest, top: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The top tables, each row with the query string that filters the page down to it."""
    sections = []
    for name, (title, param) in SECTIONS.items():
        rows = []
        for row in top[name]:
            query = request.GET.copy()
            query[param] = row["id"] if name == "models" else f"#{row['id']}"
            rows.append({**row, "filter_query": query.urlencode()})
        sections.append({"name": name, "title": title, "rows": rows})
    return sections


def _export(request: HttpRequest, kind: str) -> HttpResponseBase:
    form = UsageFilterForm(request.GET)
    if not form.is_valid():
        return HttpResponse(_error_text(form), status=400, content_type="text/plain; charset=utf-8")
    filters = scoped(request, form)
    span = f"{filters.start.isoformat()}-{filters.end.isoformat()}"
    header: tuple[str, ...]
    if kind == "records":
        page, header = exports.record_pages(filters), exports.RECORD_HEADER
    else:
        page, header = exports.daily_pages(filters), exports.DAILY_HEADER
    return exports.csv_response(request, name=f"usage-{kind}-{span}.csv", header=header, page=page)


def _error_text(form: UsageFilterForm) -> str:
    """One line per refused filter, named as in the query string: what to fix in the export's URL."""
    lines = ["The export's filters were refused:"]
    for field, errors in form.errors.items():
        name = "" if field == NON_FIELD_ERRORS else f"{field}: "
        lines += [f"- {name}{error}" for error in errors]
    return "\n".join(lines) + "\n"


@staff_view
def request_log(request: HttpRequest) -> HttpResponse:
    """The request log's search: logged bodies (opt-in per team or key) of requests the user may see."""
    form = LogSearchForm(request.GET)
    context: dict[str, Any] = {
        **admin.site.each_context(request),
        "title": "Request log",
        "form": form,
        "shown": logs.SHOWN,
        "logging": logs.anyone_logs(),
    }
    if form.is_valid():
        found = list(logs.search_logs(scoped(request, form), form.cleaned_data["q"])[: logs.SHOWN + 1])
        context.update(results=found[: logs.SHOWN], more=len(found) > logs.SHOWN)
    return TemplateResponse(request, "console/request_log.html", context)


@staff_view
def export_records(request: HttpRequest) -> HttpResponseBase:
    """The filtered raw records (those not pruned yet), one row each."""
    return _export(request, "records")


@staff_view
def export_daily(request: HttpRequest) -> HttpResponseBase:
    """The filtered daily rollup, then the days not rolled up yet aggregated the same way."""
    return _export(request, "daily")
