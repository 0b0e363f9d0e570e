"""Admin for API keys and usage records.

A key's secret exists only at creation: the admin shows it once, in a message
on the next page, and stores its hash. Usage records are read-only, filterable,
with totals per key and per model on the list page.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import Count, QuerySet, Sum
from django.forms import ModelForm
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone

from registry.models import ApiKey, ServedModel, UsageRecord
from registry.services.keys import assign_secret
from registry.services.versions import bump_version
from teams.admin_scoping import TeamScopedAdmin


@admin.register(ApiKey)
class ApiKeyAdmin(TeamScopedAdmin):
    list_display = (
        "name", "prefix", "owner", "team", "all_models", "requests_per_minute", "tokens_per_minute",
        "max_in_flight", "created_at", "last_used_at", "expires_at", "revoked_at",
    )  # fmt: skip
    list_filter = ("team", "all_models", "revoked_at", "expires_at")
    search_fields = ("name", "prefix")
    readonly_fields = ("prefix", "created_at", "last_used_at")
    filter_horizontal = ("allowed_models",)
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: ModelForm, change: bool) -> None:
        if not change:
            secret = assign_secret(key=obj)
            # Shown once: the message lives in the session until the next page renders it.
            messages.warning(
                request, f"The new key's secret (copy it now, it will not be shown again): {secret}"
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
    list_display = (
        "created_at", "request_id", "source", "model_name", "worker", "api_key", "prompt_tokens",
        "completion_tokens", "time_to_first_token_ms", "total_time_ms", "status", "status_code",
    )  # fmt: skip
    # No filter lists every key or scans the rows for distinct values: with
    # 10,000 keys and 1,000,000 rows either would cost seconds per page.
    list_filter = ("status", "source", ServedModelNameFilter, "created_at")
    search_fields = ("request_id", "=api_key__prefix", "model_name")
    list_select_related = ("worker", "api_key")
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

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
