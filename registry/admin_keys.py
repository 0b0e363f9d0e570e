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

from registry.models import ApiKey, UsageRecord
from registry.services.keys import assign_secret
from registry.services.versions import bump_version


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = (
        "name", "prefix", "owner", "all_models", "requests_per_minute", "tokens_per_minute", "max_in_flight",
        "created_at", "last_used_at", "expires_at", "revoked_at",
    )  # fmt: skip
    list_filter = ("all_models", "revoked_at", "expires_at")
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


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    list_display = (
        "created_at", "request_id", "source", "model_name", "worker", "api_key", "prompt_tokens",
        "completion_tokens", "time_to_first_token_ms", "total_time_ms", "status", "status_code",
    )  # fmt: skip
    list_filter = ("status", "source", "model_name", "api_key", "created_at")
    search_fields = ("request_id", "model_name", "error")
    list_select_related = ("worker", "api_key")
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    change_list_template = "admin/registry/usagerecord/change_list.html"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        """The list, with totals per key and per model over the filtered rows."""
        response = super().changelist_view(request, extra_context)
        if isinstance(response, TemplateResponse) and response.context_data and "cl" in response.context_data:
            rows = response.context_data["cl"].queryset.order_by()
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
