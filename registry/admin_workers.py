"""Admin for workers and served models: what runs where, and how busy it is.

Figures (status, heartbeat, load) are written by the workers themselves, so
they are read-only here; an operator edits names, policies and remote endpoints.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from registry.models import ModelAlias, ServedModel, Worker, WorkerStatus

LIVE_FIGURES = (
    "status",
    "in_flight",
    "queued",
    "tokens_per_second",
    "kv_cache_usage",
    "speed",
    "pid",
    "hostname",
    "registered_at",
    "last_heartbeat",
    "expires_at",
    "last_error",
)


class ModelAliasInline(admin.TabularInline):
    model = ModelAlias
    extra = 1


@admin.register(ServedModel)
class ServedModelAdmin(admin.ModelAdmin):
    list_display = ("name", "task", "dispatch_policy", "enabled", "online_workers")
    list_filter = ("task", "dispatch_policy", "enabled")
    search_fields = ("name", "aliases__name")
    inlines = [ModelAliasInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ServedModel]:
        # One query for the whole list, with the same "online" rule as Worker.objects.online().
        live = Q(workers__status=WorkerStatus.ONLINE, workers__expires_at__gt=timezone.now())
        return super().get_queryset(request).annotate(online_count=Count("workers", filter=live))

    @admin.display(description="Online workers", ordering="online_count")
    def online_workers(self, obj: Any) -> int:
        return int(obj.online_count)


class WorkerForm(forms.ModelForm):
    """The remote endpoint's key is write-only: never rendered back, kept when left blank."""

    remote_api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Remote endpoints only. Leave blank to keep the stored key.",
    )

    class Meta:
        model = Worker
        fields = ("remote_api_key",)  # the admin adds the rest from its own field list

    def clean_remote_api_key(self) -> str:
        return self.cleaned_data["remote_api_key"] or self.instance.remote_api_key


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    form = WorkerForm
    list_display = (
        "identity",
        "live_status",
        "heartbeat_age_display",
        "address",
        "models",
        "in_flight",
        "queued",
        "tokens_per_second_display",
        "kv_cache_display",
        "backend",
        "device",
    )
    list_filter = ("status", "kind", "backend", "device", "served_models")
    search_fields = ("identity", "address", "hostname", "served_models__name")
    readonly_fields = LIVE_FIGURES
    filter_horizontal = ("served_models",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Worker]:
        return super().get_queryset(request).prefetch_related("served_models")

    @admin.display(description="Status", ordering="status")
    def live_status(self, obj: Worker) -> str:
        """The status readers act on: a stale heartbeat shows as offline before the sweep runs."""
        return str(obj.effective_status)

    @admin.display(description="Heartbeat age", ordering="last_heartbeat")
    def heartbeat_age_display(self, obj: Worker) -> str:
        age = obj.heartbeat_age
        return "never" if age is None else f"{age.total_seconds():.1f} s"

    @admin.display(description="Models")
    def models(self, obj: Worker) -> str:
        return ", ".join(m.name for m in obj.served_models.all())

    @admin.display(description="Tokens/s", ordering="tokens_per_second")
    def tokens_per_second_display(self, obj: Worker) -> str:
        return f"{obj.tokens_per_second:.1f}"

    @admin.display(description="KV cache", ordering="kv_cache_usage")
    def kv_cache_display(self, obj: Worker) -> str:
        return "—" if obj.kv_cache_usage is None else f"{obj.kv_cache_usage:.0%}"
