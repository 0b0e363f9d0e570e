"""The request log's search: the logged bodies (opt-in per team or key) that hold a text, as filtered."""

from __future__ import annotations

from django import forms
from django.db.models import Q, QuerySet

from portal.console.usage.forms import UsageFilterForm, UsageFilters
from registry.models import ApiKey, RequestLog, UsageRecord
from registry.services.rollups import day_bounds
from teams.models import Team

SHOWN = 50  # the newest matches; a narrower text or range finds older ones


class LogSearchForm(UsageFilterForm):
    """The usage page's filters, and the text to look for in the bodies (or a request id)."""

    q = forms.CharField(
        required=False,
        max_length=200,
        label="Text",
        help_text="In the request or the answer (any case), or a request id.",
    )


def anyone_logs() -> bool:
    """Whether a team or an API key keeps a request log now."""
    return any(model.objects.filter(log_requests=True).exists() for model in (Team, ApiKey))


def search_logs(filters: UsageFilters, text: str) -> QuerySet[RequestLog]:
    """The logs of the filtered requests whose bodies hold `text` (all when it is empty), newest first.

    A substring search (LIKE): the log is opt-in and bounded in days, so a scan of its range is affordable.
    """
    start, end = day_bounds(filters.start)[0], day_bounds(filters.end)[1]
    records = UsageRecord.objects.filter(filters.q(), created_at__gte=start, created_at__lt=end)
    logs = RequestLog.objects.filter(usage_record__in=records.values("id"))
    text = text.strip()
    if text:
        logs = logs.filter(
            Q(request_body__icontains=text)
            | Q(response_text__icontains=text)
            | Q(usage_record__request_id=text)
        )
    related = (
        "usage_record__team",
        "usage_record__api_key",
        "usage_record__app_credential",
        "usage_record__user",
    )
    return logs.select_related(*related).order_by("-created_at")
