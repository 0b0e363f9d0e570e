"""Admin for API keys and usage records.

A key's secret exists only at creation: the admin shows it once, in a message
on the next page, and stores its hash. Usage records are read-only, filterable,
with totals per key and per model on the list page.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.db.models import Count, QuerySet, Sum
from django.forms import ModelForm
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from registry.admin_request_log import RequestLogWarningAdmin
from registry.models import ApiKey, RequestLog, ServedModel, UsageRecord
from registry.services.keys import assign_secret
from registry.services.versions import bump_version
from teams.admin_scoping import TeamScopedAdmin


@admin.register(ApiKey)
class ApiKeyAdmin(RequestLogWarningAdmin, TeamScopedAdmin):
    # What fits 1280 px; the limits and budgets are on each key's page.
    list_display = ("name", "prefix", "holder", "scope", "state", "last_used_at", "request_log")
    list_filter = ("team", "all_models", "log_requests", "revoked_at", "expires_at")
    search_fields = ("name", "prefix")
    readonly_fields = ("prefix", "created_at", "last_used_at", "limits")
    filter_horizontal = ("allowed_models",)
    actions = ["revoke"]

    class Media:
        css = {"all": ("registry/keys.css",)}
        js = ("registry/keys.js",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiKey]:
        return (
            super().get_queryset(request).select_related("owner", "team").prefetch_related("allowed_models")
        )

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        # A quick save makes a key that works: every model, unless narrowed below.
        return {"all_models": True, **super().get_changeform_initial_data(request)}

    def get_exclude(self, request: HttpRequest, obj: ApiKey | None = None) -> Any:
        # A key is revoked by the list's action or on its own page, never at birth.
        return ("revoked_at",) if obj is None else super().get_exclude(request, obj)

    @admin.display(description="Models")
    def scope(self, key: ApiKey) -> str:
        if key.all_models:
            return "All models"
        names = sorted(model.name for model in key.allowed_models.all())
        return ", ".join(names) if names else "No model (none chosen)"

    @admin.display(description="Limits")
    def limits(self, key: ApiKey) -> str:
        parts = [
            f"{key.requests_per_minute} req/min" if key.requests_per_minute else "",
            f"{key.tokens_per_minute} tok/min" if key.tokens_per_minute else "",
            f"{key.max_in_flight} at once" if key.max_in_flight else "",
            f"{key.daily_tokens} tok/day" if key.daily_tokens else "",
            f"{key.monthly_tokens} tok/month" if key.monthly_tokens else "",
            f"${key.monthly_budget_usd}/month" if key.monthly_budget_usd else "",
        ]
        return " · ".join(part for part in parts if part) or "—"

    @admin.display(description="Owner · team", ordering="owner__username")
    def holder(self, key: ApiKey) -> str:
        return " · ".join(str(part) for part in (key.owner, key.team) if part is not None) or "—"

    @admin.display(description="State", ordering="expires_at")
    def state(self, key: ApiKey) -> str:
        if key.revoked_at is not None:
            return "revoked"
        if key.expires_at is not None and key.expires_at <= timezone.now():
            return "expired"
        return "active" if key.expires_at is None else f"active until {key.expires_at:%Y-%m-%d}"

    def save_model(self, request: HttpRequest, obj: ApiKey, form: ModelForm, change: bool) -> None:
        if not change:
            secret = assign_secret(key=obj)
            # Shown once: the message lives in the session until the next page renders it.
            messages.warning(
                request,
                format_html(
                    'The new key\'s secret: <code class="key-secret" id="key-secret">{}</code> '
                    '<button type="button" class="key-copy" data-copy="key-secret">Copy</button> '
                    "Copy it now: it will not be shown again.",
                    secret,
                ),
            )
        super().save_model(request, obj, form, change)

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        bump_version()  # `update()` sends no signal: tell every portal here
        self.message_user(request, f"Revoked {count} key(s); they stop working within seconds.")


# Totals are a GROUP BY over the filtered rows: past this many, the page asks
# for a narrower filter (the console's usage page totals any period from the
# daily rollups instead).
TOTALS_ROW_LIMIT = 100_000


class ServedModelNameFilter(admin.SimpleListFilter):
    """Filter by model name, offering the served models' names rather than scanning usage for them."""

    title = "model"
    parameter_name = "model_name"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in ServedModel.objects.order_by("name").values_list("name", flat=True)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[UsageRecord]) -> QuerySet[UsageRecord]:
        value = self.value()
        return queryset.filter(model_name=value) if value else queryset


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    # One line a request at 1280 px; the request id, source and worker are on the record's page.
    list_display = (
        "created_at", "model_name", "key", "tokens", "ttft", "total_time", "outcome",
    )  # fmt: skip
    # No filter lists every key or scans the rows for distinct values: with
    # 10,000 keys and 1,000,000 rows either would cost seconds per page.
    list_filter = ("status", "source", ServedModelNameFilter, "created_at")
    search_fields = ("request_id", "=api_key__prefix", "model_name")
    list_select_related = ("api_key",)
    show_full_result_count = False
    readonly_fields = ("request_log",)

    @admin.display(description="Request log")
    def request_log(self, record: UsageRecord) -> str:
        """A link to its logged bodies in the request log's search, when its team or key kept them."""
        if not RequestLog.objects.filter(usage_record=record).exists():
            return "Not kept: its team's and its key's request logs were off."
        day = record.created_at.astimezone(UTC).date().isoformat()
        query = urlencode({"q": record.request_id, "start": day, "end": day})
        return format_html('<a href="{}?{}">Its request and answer</a>', reverse("console:usage:log"), query)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="API key", ordering="api_key__prefix")
    def key(self, record: UsageRecord) -> str:
        if record.api_key is None:
            return "—"
        return format_html('<span title="{}">{}</span>', record.api_key.name, record.api_key.prefix)

    @admin.display(description="Tokens in → out", ordering="prompt_tokens")
    def tokens(self, record: UsageRecord) -> str:
        return f"{record.prompt_tokens} → {record.completion_tokens}"

    @admin.display(description="TTFT", ordering="time_to_first_token_ms")
    def ttft(self, record: UsageRecord) -> str:
        return _ms(record.time_to_first_token_ms)

    @admin.display(description="Total time", ordering="total_time_ms")
    def total_time(self, record: UsageRecord) -> str:
        return _ms(record.total_time_ms)

    @admin.display(description="Outcome", ordering="status_code")
    def outcome(self, record: UsageRecord) -> str:
        return f"{record.status} {record.status_code}" if record.status_code else str(record.status)

    change_list_template = "admin/registry/usagerecord/change_list.html"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        """The list, with totals per key and per model over the filtered rows (when they are few enough)."""
        response = super().changelist_view(request, extra_context)
        if isinstance(response, TemplateResponse) and response.context_data and "cl" in response.context_data:
            changelist = response.context_data["cl"]
            response.context_data["totals_row_limit"] = TOTALS_ROW_LIMIT
            if changelist.result_count > TOTALS_ROW_LIMIT:
                response.context_data["totals_skipped"] = changelist.result_count
                return response
            rows = changelist.queryset.order_by()
            totals = {
                "requests": Count("id"),
                "prompt": Sum("prompt_tokens"),
                "completion": Sum("completion_tokens"),
            }
            response.context_data["totals_per_key"] = list(
                rows.values("api_key__name", "api_key__prefix").annotate(**totals).order_by("-requests")[:50]
            )
            response.context_data["totals_per_model"] = list(
                rows.values("model_name").annotate(**totals).order_by("-requests")[:50]
            )
        return response


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"
