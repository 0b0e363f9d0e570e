"""Admin for nodes and deployments: what the fleet should run, and what each replica is doing.

Saving a deployment goes through `fleet.services.deployments` (a changed
worker option starts a rolling restart) and runs the scheduler at once; the
agents do the rest within a tick. Instances are written by the agents, so
they are read-only here.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import SuspiciousOperation, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from fleet.models import Deployment, DeploymentEvent, Instance, Node
from fleet.selectors import list_catalogue
from fleet.services import deployments, scheduler, served
from fleet.services.served import ServedFate
from fleet.widgets import CataloguePicker, LabelsField


def size(value: int | None) -> str:
    return "—" if not value else f"{value / 2**30:.1f} GiB"


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "online",
        "address",
        "cpus",
        "memory",
        "free_memory",
        "gpu_list",
        "labels",
        "replicas",
    )
    search_fields = ("name", "address")
    readonly_fields = [f.name for f in Node._meta.fields]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Node]:
        return super().get_queryset(request).prefetch_related("instances")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # an agent registers its node

    @admin.display(boolean=True, description="Online")
    def online(self, obj: Node) -> bool:
        return obj.is_online

    @admin.display(description="Memory", ordering="memory_bytes")
    def memory(self, obj: Node) -> str:
        return size(obj.memory_bytes)

    @admin.display(description="Free", ordering="available_memory_bytes")
    def free_memory(self, obj: Node) -> str:
        return size(obj.available_memory_bytes)

    @admin.display(description="GPUs")
    def gpu_list(self, obj: Node) -> str:
        return ", ".join(f"{g.get('name')} ({size(g.get('memory_bytes'))})" for g in obj.gpus) or "—"

    @admin.display(description="Replicas")
    def replicas(self, obj: Node) -> int:
        return sum(i.wanted for i in obj.instances.all())


class InstanceInline(admin.TabularInline):
    model = Instance
    extra = 0
    can_delete = False
    fields = ("worker_id", "node", "generation", "state", "port", "pid", "restarts", "detail", "last_log")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Instance]:
        return super().get_queryset(request).select_related("deployment", "node")

    @admin.display(description="Worker id")
    def worker_id(self, obj: Instance) -> str:
        return obj.identity

    @admin.display(description="Last log lines (at the last crash)")
    def last_log(self, obj: Instance) -> str:
        return (
            format_html("<pre style='max-height:12em;overflow:auto'>{}</pre>", obj.log_tail)
            if obj.log_tail
            else "—"
        )


class EventInline(admin.TabularInline):
    """The autoscaler's decisions, newest first, each with its reason (evictions included)."""

    model = DeploymentEvent
    extra = 0
    max_num = 0
    can_delete = False
    fields = ("at", "action", "replicas_before", "replicas_after", "reason")
    readonly_fields = fields
    verbose_name_plural = "Scaling events (newest first)"

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeploymentEvent]:
        return super().get_queryset(request).order_by("-at", "-id")


class DeploymentForm(forms.ModelForm):
    class Meta:
        model = Deployment
        fields = (
            "name", "model_names", "model_path", "backend", "role", "replicas", "min_replicas",
            "max_replicas", "idle_seconds", "target_queue_wait", "target_in_flight", "scale_up_after",
            "cooldown", "priority",
            "cold_start_timeout", "max_concurrency", "dtype", "threads", "max_model_len", "extra_args",
            "runs_on", "placement", "required_labels", "memory_per_replica",
        )  # fmt: skip
        widgets = {"model_path": CataloguePicker()}

    required_labels = LabelsField(
        required=False,
        help_text="Node labels a replica needs (runagent --labels), one key=value a row; blank: any node.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "model_path" not in self.fields:
            return  # a user who may only view it: every field is shown read-only
        if self.instance.pk is not None:
            self.fields["name"].disabled = True  # workers' ids carry it
        picker = self.fields["model_path"].widget
        if isinstance(picker, CataloguePicker):
            picker.entries = list_catalogue()

    def clean_extra_args(self) -> str:
        extra: str = self.cleaned_data["extra_args"]
        try:
            deployments.check_extra_args(extra)
        except ValidationError as exc:
            raise ValidationError(exc.messages) from None  # shown on the field, naming the option
        return extra

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if "model_path" in cleaned and "backend" in cleaned:
            candidate = Deployment(model_path=cleaned["model_path"], backend=cleaned["backend"])
            try:
                deployments.check_model_path(candidate)
            except ValidationError as exc:
                self.add_error(None, exc)  # its errors name the model path field
        return cleaned


def _fate_context(doomed: list[Deployment]) -> dict[str, Any]:
    """What the delete confirmation asks: the served names left behind, and what becomes of them."""
    return {"served_names": served.names_left_behind(doomed), "served_fates": ServedFate.choices}


def _stop_first(names: list[str]) -> str:
    listed = ", ".join(f"“{name}”" for name in names)
    return (
        f"{listed} still running: stop it first (the Stop action scales it to 0 and its workers drain), "
        "then delete it once its replicas are gone."
    )


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    form = DeploymentForm
    list_display = (
        "name",
        "model_path",
        "backend",
        "replicas",
        "scaling",
        "replica_states",
        "pending_reason",
        "updated_at",
    )
    search_fields = ("name", "model_path", "model_names")
    readonly_fields = ("generation", "pending_reason")
    inlines = [InstanceInline, EventInline]
    actions = ["restart", "stop"]

    class Media:
        css = {"all": ("fleet/deployment.css",)}
        js = ("fleet/deployment.js",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Deployment]:
        return super().get_queryset(request).prefetch_related("instances")

    @admin.display(description="Scaling")
    def scaling(self, obj: Deployment) -> str:
        if not obj.autoscaled:
            return "fixed"
        text = f"{obj.min_replicas}–{obj.max_replicas}"
        return f"{text}, cold: starts on a request" if obj.cold else text

    @admin.display(description="Replicas now")
    def replica_states(self, obj: Deployment) -> str:
        return str(deployments.summarize(obj, list(obj.instances.all())))

    def save_model(self, request: HttpRequest, obj: Deployment, form: Any, change: bool) -> None:
        try:
            deployments.save_deployment(obj)
        except ValidationError as exc:  # the form checked already; a race is still told
            self.message_user(request, "; ".join(exc.messages), level="error")
            return
        scheduler.reconcile()

    def has_delete_permission(self, request: HttpRequest, obj: Deployment | None = None) -> bool:
        # Stop first: a deployment goes once its agents have stopped every replica.
        return super().has_delete_permission(request, obj) and (obj is None or not obj.instances.exists())

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> Any:
        """A deployment with replicas left: say what to do, on its page, rather than "no permission"."""
        running = Deployment.objects.filter(pk=object_id, instances__isnull=False).first()
        if running is not None and super().has_delete_permission(request, running):
            self.message_user(request, _stop_first([running.name]), messages.ERROR)
            return HttpResponseRedirect(reverse("admin:fleet_deployment_change", args=[running.pk]))
        doomed = list(Deployment.objects.filter(pk=object_id))
        return super().delete_view(request, object_id, {**(extra_context or {}), **_fate_context(doomed)})

    def delete_model(self, request: HttpRequest, obj: Deployment) -> None:
        self._delete(request, [obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        self._delete(request, list(queryset))

    def _delete(self, request: HttpRequest, doomed: list[Deployment]) -> None:
        """Delete, and disable (the default) or remove the served models that nothing else serves."""
        fate = request.POST.get("served_models", ServedFate.DISABLE)
        if fate not in ServedFate.values:
            raise SuspiciousOperation(f"served_models must be one of {', '.join(ServedFate.values)}.")
        names = served.delete_deployments(doomed, fate=fate)
        if names:
            done = "removed" if fate == ServedFate.REMOVE else "disabled"
            listed = ", ".join(f"“{name}”" for name in names)
            self.message_user(
                request, f"Served model(s) {listed} {done}: their requests get 404 model_not_found."
            )

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        entry = actions.get("delete_selected")
        if entry is not None:
            delete, name, description = entry

            def delete_stopped(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Deployment]) -> Any:
                running = queryset.filter(instances__isnull=False).distinct().values_list("name", flat=True)
                if running:
                    self.message_user(request, _stop_first(sorted(running)), messages.ERROR)
                    return None
                response = delete(modeladmin, request, queryset)
                if isinstance(response, TemplateResponse) and response.context_data is not None:
                    response.context_data.update(_fate_context(list(queryset)))  # the confirmation page
                return response

            actions["delete_selected"] = (delete_stopped, name, description)
        return actions

    @admin.action(description="Restart: replace every replica, one at a time")
    def restart(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        for deployment in queryset:
            deployments.restart(deployment)
        scheduler.reconcile()
        self.message_user(request, f"{len(queryset)} deployment(s) restarting, one replica at a time.")

    @admin.action(description="Stop: scale to 0 (workers drain)")
    def stop(self, request: HttpRequest, queryset: QuerySet[Deployment]) -> None:
        for deployment in queryset:
            deployments.scale(deployment, 0)
        scheduler.reconcile()
        self.message_user(request, f"{len(queryset)} deployment(s) stopping.")
