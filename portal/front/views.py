"""`/`: the models online with their tasks, links to the chat, arena, API docs and console, a code snippet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_GET

from registry.models import ModelTask, ServedModel, WorkerStatus

FAVICON = Path(__file__).resolve().parent.parent / "static" / "portal" / "favicon.svg"


@dataclass(frozen=True)
class OnlineModel:
    name: str
    task: str
    task_label: str
    replicas: int


def list_online_models() -> list[OnlineModel]:
    """Enabled models with at least one online worker, by name (one query)."""
    live = Q(workers__status=WorkerStatus.ONLINE, workers__expires_at__gt=timezone.now())
    rows = (
        ServedModel.objects.filter(enabled=True)
        .annotate(online=Count("workers", filter=live))
        .filter(online__gt=0)
        .order_by("name")
    )
    labels = dict(ModelTask.choices)
    return [OnlineModel(row.name, row.task, labels.get(row.task, row.task), row.online) for row in rows]


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    models = list_online_models()
    chat_models = [m for m in models if m.task == ModelTask.GENERATE]
    context = {
        "models": models,
        "chat_models": chat_models,
        "example_model": chat_models[0].name if chat_models else "MODEL-NAME",
        "base_url": request.build_absolute_uri("/v1"),
    }
    return render(request, "front/home.html", context)


@require_GET
@cache_control(max_age=86400, public=True)
def favicon(request: HttpRequest) -> HttpResponse:
    """The portal's icon at the path browsers ask for unprompted."""
    return HttpResponse(FAVICON.read_bytes(), content_type="image/svg+xml")
