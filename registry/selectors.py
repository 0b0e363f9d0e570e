"""Read-side queries about workers and served models (HackSoft-style selectors)."""

from __future__ import annotations

from django.db.models import QuerySet

from registry.models import ServedModel, Worker


def list_online_workers(*, model_name: str) -> list[Worker]:
    """Workers alive now (heartbeat fresh) that serve the enabled model `model_name`."""
    return list(
        Worker.objects.online().filter(served_models__name=model_name, served_models__enabled=True).distinct()
    )


async def alist_online_workers(*, model_name: str) -> list[Worker]:
    queryset = (
        Worker.objects.online().filter(served_models__name=model_name, served_models__enabled=True).distinct()
    )
    return [worker async for worker in queryset]


def list_workers() -> QuerySet[Worker]:
    """Every worker with its served models, for the admin and the console."""
    return Worker.objects.prefetch_related("served_models")


def get_worker(*, identity: str) -> Worker:
    """The worker with this identity; raises Worker.DoesNotExist."""
    return Worker.objects.get(identity=identity)


def list_served_model_names(*, online_only: bool = True) -> list[str]:
    """Names of enabled models, by default only those some live worker serves."""
    queryset = ServedModel.objects.filter(enabled=True)
    if online_only:
        queryset = queryset.filter(workers__in=Worker.objects.online())
    return sorted(set(queryset.values_list("name", flat=True)))
