"""The audit page in the console (/admin/console/audit/): filters, newest first, and its CSV."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime, time
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET

from audit.models import AuditEntry, AuditSource
from audit.snapshots import AUDITED

PERMISSION = "audit.view_auditentry"
PAGE_SIZE = 100
CSV_HEADER = ("at", "actor", "source", "action", "object_type", "object_id", "object", "before", "after")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False, max_length=200, help_text="Username or command, or a part.")
    source = forms.ChoiceField(required=False, choices=[("", "any"), *AuditSource.choices])
    action = forms.CharField(required=False, max_length=64)
    object_type = forms.ChoiceField(required=False, choices=[("", "any"), *[(t, t) for t in sorted(AUDITED)]])
    object = forms.CharField(required=False, max_length=200, help_text="Id or name, or a part of the name.")
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def entries(self) -> QuerySet[AuditEntry]:
        data = self.cleaned_data
        rows = AuditEntry.objects.all()
        if data["actor"]:
            rows = rows.filter(actor_name__icontains=data["actor"])
        for field in ("source", "action", "object_type"):
            if data[field]:
                rows = rows.filter(**{field: data[field]})
        if data["object"]:
            rows = rows.filter(Q(object_id=data["object"]) | Q(object_repr__icontains=data["object"]))
        if data["start"]:
            rows = rows.filter(at__gte=datetime.combine(data["start"], time.min, tzinfo=UTC))
        if data["end"]:
            rows = rows.filter(at__lt=datetime.combine(data["end"], time.max, tzinfo=UTC))
        return rows


def _checked(view: Any) -> Any:
    def checked(request: HttpRequest) -> HttpResponseBase:
        if not request.user.has_perm(PERMISSION):
            raise PermissionDenied
        return view(request)

    return admin.site.admin_view(require_GET(checked))


def _page(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET)
    context: dict[str, Any] = {
        **admin.site.each_context(request),
        "title": "Audit trail",
        "form": form,
        "query": request.GET.urlencode(),
        "retention_days": settings.AUDIT_RETENTION_DAYS,
    }
    if form.is_valid():
        page = Paginator(form.entries(), PAGE_SIZE).get_page(request.GET.get("page"))
        context["page"] = page
    return TemplateResponse(request, "audit/audit.html", context)


def _cell(value: Any) -> Any:
    if isinstance(value, dict | list):
        value = json.dumps(value, sort_keys=True)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value


class _Echo:
    def write(self, value: str) -> str:
        return value


def _lines(rows: QuerySet[AuditEntry]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_HEADER)
    for entry in rows.iterator(chunk_size=2000):
        cells = (
            entry.at.isoformat(), entry.actor_name, entry.source, entry.action, entry.object_type,
            entry.object_id, entry.object_repr, entry.before, entry.after,
        )  # fmt: skip
        yield writer.writerow([_cell(c) for c in cells])


def _csv(request: HttpRequest) -> HttpResponseBase:
    form = AuditFilterForm(request.GET)
    if not form.is_valid():
        return HttpResponse(form.errors.as_text(), status=400, content_type="text/plain; charset=utf-8")
    return StreamingHttpResponse(
        _lines(form.entries()),
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
    )


audit_page = _checked(_page)
audit_csv = _checked(_csv)
