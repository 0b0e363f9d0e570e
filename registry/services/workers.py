"""Worker bookkeeping: registration, heartbeats, draining, going offline, expiry.

The only writer of `Worker` rows for our own workers. Every function takes
keyword arguments and is safe to call again (a retried heartbeat or a second
registration after a restart changes nothing twice). Sync functions run in the
worker's heartbeat thread; the `a*` twins serve async callers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from registry.models import (
    DispatchPolicy,
    ModelTask,
    ServedModel,
    Worker,
    WorkerIntent,
    WorkerKind,
    WorkerStatus,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerRegistration:
    """What a worker says about itself when it comes online."""

    identity: str
    address: str
    model_names: tuple[str, ...]
    task: str = ModelTask.GENERATE
    backend: str = ""
    device: str = ""
    build: str = ""  # which build of the engine: "llama.cpp native avx512"
    model_path: str = ""
    hostname: str = ""
    pid: int | None = None
    max_concurrency: int = 1
    max_queue: int = 0
    max_model_len: int | None = None
    heartbeat_interval: float | None = None
    role: str = "both"


def heartbeat_expiry(interval: float) -> timedelta:
    """How long a row stays live after a heartbeat (workers' and nodes' alike)."""
    return timedelta(seconds=interval * settings.HEARTBEAT_EXPIRY_INTERVALS)


@transaction.atomic
def register_worker(*, registration: WorkerRegistration) -> Worker:
    """Upsert the worker's row by identity and mark it online; create missing served models.

    The same identity after a restart keeps the same row (and its usage
    history); its figures start again from zero. An operator's drain or
    remove outlives the restart: such a worker comes back draining, and
    reads its intent from the returned row. Address, kind, role and models
    are the registration's alone (the admin shows them read-only, heartbeats
    leave them): the portal sends prompts and the worker token to that address.
    """
    reg = registration
    interval = reg.heartbeat_interval or settings.HEARTBEAT_INTERVAL
    now = timezone.now()
    intent = Worker.objects.filter(identity=reg.identity).values_list("intent", flat=True).first()
    serving = intent in (None, WorkerIntent.SERVE)
    worker, _ = Worker.objects.update_or_create(
        identity=reg.identity,
        defaults={
            "kind": WorkerKind.LOCAL,
            "address": reg.address,
            "remote_api_key": "",  # a row that was a remote endpoint keeps no key it no longer uses
            "status": WorkerStatus.ONLINE if serving else WorkerStatus.DRAINING,
            "backend": reg.backend,
            "device": reg.device,
            "build": reg.build,
            "model_path": reg.model_path,
            "hostname": reg.hostname,
            "pid": reg.pid,
            "max_concurrency": reg.max_concurrency,
            "max_queue": reg.max_queue,
            "max_model_len": reg.max_model_len,
            "heartbeat_interval": interval,
            "role": reg.role,
            "in_flight": 0,
            "queued": 0,
            "tokens_per_second": 0.0,
            "registered_at": now,
            "last_heartbeat": now,
            "expires_at": now + heartbeat_expiry(interval),
            "last_error": "",
        },
    )
    served = []
    for name in reg.model_names:
        # A model a worker brings is dispatched cache-aware when it generates: prompts repeat.
        policy = (
            DispatchPolicy.CACHE_AWARE if reg.task == ModelTask.GENERATE else DispatchPolicy.LEAST_INFLIGHT
        )
        defaults = {"task": reg.task, "dispatch_policy": policy}
        model, created = ServedModel.objects.get_or_create(name=name, defaults=defaults)
        if not created and model.task != reg.task:
            logger.warning(
                "Served model %s is a %s model; worker %s says %s", name, model.task, reg.identity, reg.task
            )
        served.append(model)
    worker.served_models.set(served)
    return worker


def record_heartbeat(
    *,
    identity: str,
    in_flight: int,
    queued: int,
    tokens_per_second: float,
    kv_cache_usage: float | None = None,
    memory_bytes: int | None = None,
    prefix_cache_hit_rate: float | None = None,
    prefix_cache_tokens: int | None = None,
    interval: float | None = None,
) -> str | None:
    """Store the worker's live figures and push its expiry forward; return the operator's intent.

    Returns None when there is no live row to update (it was swept offline,
    resumed after a drain, or deleted): the worker then registers again. A
    drained worker is offline on purpose and keeps beating, so that the admin
    sees it alive and can resume it.
    """
    interval = interval or settings.HEARTBEAT_INTERVAL
    now = timezone.now()
    fields: dict[str, object] = {
        "in_flight": in_flight,
        "queued": queued,
        "tokens_per_second": tokens_per_second,
        "kv_cache_usage": kv_cache_usage,
        "memory_bytes": memory_bytes,
        "prefix_cache_hit_rate": prefix_cache_hit_rate,
        "prefix_cache_tokens": prefix_cache_tokens,
        "last_heartbeat": now,
        "expires_at": now + heartbeat_expiry(interval),
    }
    if tokens_per_second > 0:
        # Lottery weight follows measured speed; an idle worker keeps its last weight.
        fields["speed"] = tokens_per_second
    row = Worker.objects.filter(identity=identity)
    if not row.exclude(status=WorkerStatus.OFFLINE, intent=WorkerIntent.SERVE).update(**fields):
        return None
    return row.values_list("intent", flat=True).first()


def mark_draining(*, identity: str) -> None:
    """Stop dispatch to the worker (it is finishing what it has) without calling it offline."""
    Worker.objects.filter(identity=identity).exclude(status=WorkerStatus.OFFLINE).update(
        status=WorkerStatus.DRAINING
    )


def mark_drained(*, identity: str) -> None:
    """Mark a worker the operator drained offline: it has finished what it had and takes nothing new."""
    Worker.objects.filter(identity=identity, intent=WorkerIntent.DRAIN).update(
        status=WorkerStatus.OFFLINE, in_flight=0, queued=0
    )


def mark_offline(*, identity: str, error: str = "") -> None:
    """Mark the worker offline: it has exited or is about to. A worker asked to go is deleted instead."""
    Worker.objects.filter(identity=identity, intent=WorkerIntent.REMOVE).delete()
    Worker.objects.filter(identity=identity).update(
        status=WorkerStatus.OFFLINE, in_flight=0, queued=0, last_error=error
    )


def expire_stale_workers() -> int:
    """Mark offline every local worker whose heartbeat expired; return how many.

    Readers already treat them as offline (`Worker.objects.online()`); this
    makes the stored status agree, for the admin and for counting. Remote
    endpoints are left to the probe that keeps their expiry fresh.
    """
    count = (
        Worker.objects.expired()
        .filter(kind=WorkerKind.LOCAL)
        .update(status=WorkerStatus.OFFLINE, in_flight=0, queued=0, last_error="Heartbeat expired.")
    )
    if count:
        logger.info("Marked %d stale worker(s) offline", count)
    return count
