"""Admin for workers and served models: what runs where, how busy it is, and the operator's controls.

Figures (status, heartbeat, load) are written by the workers themselves, so
they are read-only here; so is what our own worker registers about itself
(address, kind, role...): the portal sends prompts and the worker token to
that address, so only the worker's registration writes it. An operator adds
and edits remote endpoints (never prefill or decode workers), drains, resumes
and removes workers, and enables or disables models. Each control goes
through `registry.services.controls`, which bumps the registry version so
that every portal follows within a second.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, DecimalField, Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from registry.models import ModelAlias, ServedModel, Worker, WorkerIntent, WorkerKind, WorkerStatus
from registry.services import controls

LIVE_FIGURES = (
    "status",
    "intent",
    "in_flight",
    "queued",
    "tokens_per_second",
    "kv_cache_usage",
    "memory_bytes",
    "speed",
    "pid",
    "hostname",
    "registered_at",
    "last_heartbeat",
    "expires_at",
    "last_error",
)
# What our worker's registration writes on every start (registry.services.workers.register_worker).
REGISTERED = (
    "identity",
    "kind",
    "address",
    "role",
    "served_models",
    "backend",
    "device",
    "build",
    "model_path",
    "max_concurrency",
    "max_queue",
    "max_model_len",
    "heartbeat_interval",
)
ROLES = (("both", "both"), ("prefill", "prefill"), ("decode", "decode"))
# A worker's page, in the order an operator reads it: where it is and what it serves, how it is now,
# what it may take, and its process. A field no section names goes to the first one.
SECTIONS = (
    ("Serving", ("identity", "address", "served_models", "backend", "device", "role", "kind", "model_path")),
    (
        "Now",
        (
            "live_status",
            "heartbeat_age_display",
            "in_flight",
            "queued",
            "tokens_per_second",
            "kv_cache_usage",
            "memory_display",
            "speed",
            "last_error",
        ),
    ),
    ("Capacity", ("max_concurrency", "max_queue", "max_model_len", "heartbeat_interval")),
    ("Process", ("pid", "hostname", "registered_at", "last_heartbeat", "expires_at", "status", "intent")),
)
SHOWN_INSTEAD = {"memory_bytes": "memory_display"}  # raw figures a section shows in readable units


def readable_bytes(count: int | None) -> str:
    """1536 MiB → "1.5 GiB"; under a GiB in MiB; "—" when unknown."""
    if count is None:
        return "—"
    mebibytes = count / 2**20
    return f"{mebibytes / 1024:.1f} GiB" if mebibytes >= 1024 else f"{mebibytes:.0f} MiB"


class ModelAliasInline(admin.TabularInline):
    model = ModelAlias
    extra = 1


@admin.register(ServedModel)
class ServedModelAdmin(admin.ModelAdmin):
    list_display = (
        "name", "task", "dispatch_policy", "enabled", "online_workers",
        "input_price_per_million", "output_price_per_million",
    )  # fmt: skip
    list_editable = ("input_price_per_million", "output_price_per_million")
    # Prices are short figures: narrow boxes keep the list within 1280 px.
    formfield_overrides = {DecimalField: {"widget": forms.NumberInput(attrs={"style": "width: 7em"})}}
    list_filter = ("task", "dispatch_policy", "enabled")
    search_fields = ("name", "aliases__name")
    inlines = [ModelAliasInline]
    actions = ["enable_models", "disable_models"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ServedModel]:
        # One query for the whole list, with the same "online" rule as Worker.objects.online().
        live = Q(workers__status=WorkerStatus.ONLINE, workers__expires_at__gt=timezone.now())
        return super().get_queryset(request).annotate(online_count=Count("workers", filter=live))

    @admin.display(description="Online workers", ordering="online_count")
    def online_workers(self, obj: Any) -> int:
        return int(obj.online_count)

    @admin.action(description="Enable the selected models")
    def enable_models(self, request: HttpRequest, queryset: QuerySet[ServedModel]) -> None:
        count = controls.set_models_enabled(model_ids=queryset.values_list("id", flat=True), enabled=True)
        self.message_user(request, f"{count} model(s) enabled.")

    @admin.action(description="Disable the selected models (requests get 404)")
    def disable_models(self, request: HttpRequest, queryset: QuerySet[ServedModel]) -> None:
        count = controls.set_models_enabled(model_ids=queryset.values_list("id", flat=True), enabled=False)
        self.message_user(request, f"{count} model(s) disabled.")


class WorkerForm(forms.ModelForm):
    """A remote endpoint's form: its key is write-only (never rendered back, kept when left blank).

    A row added here is a remote endpoint; its role stays "both", since a
    decode worker would send its prefill workers the prompt and the worker token.
    """

    remote_api_key = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Remote endpoints only. Leave blank to keep the stored key.",
    )

    role = forms.ChoiceField(choices=ROLES, initial="both", help_text="Remote endpoints: both.")

    class Meta:
        model = Worker
        fields = ("remote_api_key",)  # the admin passes its own field list, less the read-only ones

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is None:
            self.instance.kind = WorkerKind.REMOTE
        elif self.instance.kind == WorkerKind.LOCAL:
            self.fields.pop("remote_api_key", None)  # our workers get the worker token, never a key

    def clean_remote_api_key(self) -> str:
        return self.cleaned_data["remote_api_key"] or self.instance.remote_api_key

    def clean_role(self) -> str:
        role = self.cleaned_data["role"]
        if self.instance.kind == WorkerKind.REMOTE and role != "both":
            raise ValidationError(
                "A remote endpoint serves whole requests: its role is 'both'. Prefill and decode "
                "workers are our own workers (runworker --role), which register themselves."
            )
        return str(role)


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    form = WorkerForm
    change_form_template = "admin/registry/worker/change_form.html"  # with drain and resume buttons
    # What an operator scans for; address, role, backend, device and build are on each worker's page.
    list_display = (
        "identity",
        "live_status",
        "heartbeat_age_display",
        "models",
        "load",
        "tokens_per_second_display",
        "kv_cache_display",
    )
    list_filter = ("status", "intent", "kind", "role", "backend", "device", "served_models")
    search_fields = ("identity", "address", "hostname", "served_models__name")
    fields = (*REGISTERED, "remote_api_key", *LIVE_FIGURES)
    filter_horizontal = ("served_models",)
    actions = ["drain", "resume", "remove"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Worker]:
        return super().get_queryset(request).prefetch_related("served_models")

    def get_readonly_fields(self, request: HttpRequest, obj: Worker | None = None) -> tuple[str, ...]:
        """Our worker's own registration owns what it says of itself; a remote endpoint stays remote."""
        shown = ("live_status", "heartbeat_age_display", "memory_display")  # figures of its page
        if obj is not None and obj.kind == WorkerKind.LOCAL:
            return LIVE_FIGURES + REGISTERED + shown
        return (*LIVE_FIGURES, "kind", *shown)

    def get_fields(self, request: HttpRequest, obj: Worker | None = None) -> Any:
        if obj is not None and obj.kind == WorkerKind.LOCAL:
            return [f for f in self.fields if f != "remote_api_key"]
        return self.fields

    def get_fieldsets(self, request: HttpRequest, obj: Worker | None = None) -> Any:
        """A worker's page by section (SECTIONS); adding a remote endpoint keeps the plain form."""
        if obj is None:
            return super().get_fieldsets(request, obj)
        fields = [SHOWN_INSTEAD.get(name, name) for name in self.get_fields(request, obj)]
        placed = {"live_status", "heartbeat_age_display"}
        sections = []
        for title, names in SECTIONS:
            shown = [name for name in names if name in fields or name in placed]
            sections.append((title, {"fields": shown}))
            placed.update(shown)
        rest = [name for name in fields if name not in placed]
        if rest:
            sections[0][1]["fields"].extend(rest)  # remote_api_key, or a field added later
        return sections

    @admin.display(description="Memory")
    def memory_display(self, obj: Worker) -> str:
        return readable_bytes(obj.memory_bytes)

    @admin.display(description="Status", ordering="status")
    def live_status(self, obj: Worker) -> str:
        """The status readers act on: a stale heartbeat shows as offline before the sweep runs."""
        if obj.intent == WorkerIntent.SERVE:
            return str(obj.effective_status)
        return f"{obj.effective_status} ({obj.get_intent_display().split(' (')[0].lower()})"

    @admin.action(description="Drain: take no new requests, finish those in flight, then go offline")
    def drain(self, request: HttpRequest, queryset: QuerySet[Worker]) -> None:
        count = controls.drain_workers(worker_ids=queryset.values_list("id", flat=True))
        self.message_user(request, f"{count} worker(s) draining; dispatch to them has stopped.")

    @admin.action(description="Resume: serve again after a drain")
    def resume(self, request: HttpRequest, queryset: QuerySet[Worker]) -> None:
        count = controls.resume_workers(worker_ids=queryset.values_list("id", flat=True))
        self.message_user(request, f"{count} worker(s) resuming with their next heartbeat.")

    @admin.action(description="Remove: delete gone workers; drain and stop running ones")
    def remove(self, request: HttpRequest, queryset: QuerySet[Worker]) -> None:
        deleted, asked = controls.remove_workers(worker_ids=queryset.values_list("id", flat=True))
        self.message_user(
            request,
            f"{deleted} worker(s) deleted; {asked} running worker(s) draining, then exiting.",
            messages.SUCCESS,
        )

    @admin.display(description="Heartbeat age", ordering="last_heartbeat")
    def heartbeat_age_display(self, obj: Worker) -> str:
        age = obj.heartbeat_age
        return "never" if age is None else f"{age.total_seconds():.1f} s"

    @admin.display(description="Models")
    def models(self, obj: Worker) -> str:
        return ", ".join(m.name for m in obj.served_models.all())

    @admin.display(description="In flight / queued", ordering="in_flight")
    def load(self, obj: Worker) -> str:
        return f"{obj.in_flight} / {obj.queued}"

    @admin.display(description="Tokens/s", ordering="tokens_per_second")
    def tokens_per_second_display(self, obj: Worker) -> str:
        return f"{obj.tokens_per_second:.1f}"

    @admin.display(description="KV cache", ordering="kv_cache_usage")
    def kv_cache_display(self, obj: Worker) -> str:
        return "—" if obj.kv_cache_usage is None else f"{obj.kv_cache_usage:.0%}"
