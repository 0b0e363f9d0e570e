"""What an operator does to the fleet from the admin: drain, resume and remove workers; enable models.

Each change is a database write plus a registry version bump, so that every
portal stops (or starts) dispatching within one cache interval. Our own
workers read their intent with each heartbeat and act on it themselves:
a drained worker refuses new requests, finishes those it has, then reports
offline and waits to be resumed; a removed one drains, exits and deletes its
row. Remote endpoints have no process to tell, so the row is all there is.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from registry.models import ServedModel, Worker, WorkerIntent, WorkerKind, WorkerStatus
from registry.services.versions import bump_version

LIVE_STATUSES = (WorkerStatus.STARTING, WorkerStatus.ONLINE, WorkerStatus.DRAINING)


def _running(ids: Iterable[int]) -> Q:
    """Local workers whose process still heartbeats."""
    return Q(id__in=list(ids), kind=WorkerKind.LOCAL, expires_at__gt=timezone.now())


@transaction.atomic
def drain_workers(*, worker_ids: Iterable[int]) -> int:
    """Stop dispatch to the workers; what they run finishes, then they go offline. Return how many."""
    ids = list(worker_ids)
    rows = Worker.objects.filter(id__in=ids)
    count = rows.update(intent=WorkerIntent.DRAIN)
    rows.filter(status__in=LIVE_STATUSES).update(status=WorkerStatus.DRAINING)
    # A remote endpoint has nothing in flight that we track; it is drained at once.
    rows.filter(kind=WorkerKind.REMOTE).update(status=WorkerStatus.OFFLINE)
    transaction.on_commit(bump_version)
    return count


@transaction.atomic
def resume_workers(*, worker_ids: Iterable[int]) -> int:
    """Let drained workers serve again; a local one registers online with its next heartbeat."""
    ids = list(worker_ids)
    rows = Worker.objects.filter(id__in=ids).exclude(intent=WorkerIntent.SERVE)
    count = rows.update(intent=WorkerIntent.SERVE)
    # The probe takes a remote endpoint offline again if it does not answer.
    Worker.objects.filter(id__in=ids, kind=WorkerKind.REMOTE).update(status=WorkerStatus.ONLINE)
    transaction.on_commit(bump_version)
    return count


@transaction.atomic
def remove_workers(*, worker_ids: Iterable[int]) -> tuple[int, int]:
    """Delete the rows of workers that are gone; ask running ones to drain, exit and delete theirs.

    Returns (deleted now, asked to go).
    """
    ids = list(worker_ids)
    running = Worker.objects.filter(_running(ids))
    asked = running.update(intent=WorkerIntent.REMOVE, status=WorkerStatus.DRAINING)
    _, per_model = Worker.objects.filter(id__in=ids).exclude(_running(ids)).delete()
    deleted = per_model.get(Worker._meta.label, 0)
    transaction.on_commit(bump_version)
    return deleted, asked


def set_models_enabled(*, model_ids: Iterable[int], enabled: bool) -> int:
    """Enable or disable served models; a disabled model answers 404 on every portal."""
    count = ServedModel.objects.filter(id__in=list(model_ids)).update(enabled=enabled)
    bump_version()
    return count
