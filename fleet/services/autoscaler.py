"""The autoscaler's service: each deployment's load in, `fleet.autoscale` decisions out, events kept.

The load comes from the portals' demand rows (`ModelDemand`: waiting requests,
the oldest one's age, in flight, the last request) and from the workers'
heartbeats (in flight and queued on each worker); whichever says more counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Sum
from django.utils import timezone

from fleet.autoscale import Decision, Load, Memory, Policy, decide
from fleet.models import Deployment, DeploymentEvent, Instance, InstanceState, ModelDemand
from registry.models import Worker

logger = logging.getLogger(__name__)

DEMAND_FRESH = timedelta(seconds=10)  # a portal rewrites its rows every few seconds while it has load
DEMAND_FORGOTTEN = timedelta(days=1)  # rows of portals gone this long are deleted
EVENTS_KEPT = 200  # per deployment


@dataclass(frozen=True)
class ModelLoad:
    """Every portal's view of one model, added up."""

    waiting: int = 0
    waiting_since: datetime | None = None
    in_flight: int = 0
    last_request_at: datetime | None = None


def model_loads(now: datetime) -> dict[str, ModelLoad]:
    """Per model name, the fresh demand of every portal added up (the last request from any row)."""
    ModelDemand.objects.filter(updated_at__lt=now - DEMAND_FORGOTTEN).delete()
    loads: dict[str, ModelLoad] = {}
    for row in ModelDemand.objects.all():
        fresh = row.updated_at >= now - DEMAND_FRESH
        load = loads.get(row.model, ModelLoad())
        since = [t for t in (load.waiting_since, row.waiting_since if fresh and row.waiting else None) if t]
        last = [t for t in (load.last_request_at, row.last_request_at) if t]
        loads[row.model] = ModelLoad(
            waiting=load.waiting + (row.waiting if fresh else 0),
            waiting_since=min(since) if since else None,
            in_flight=load.in_flight + (row.in_flight if fresh else 0),
            last_request_at=max(last) if last else None,
        )
    return loads


def demand_of(deployment: Deployment, loads: dict[str, ModelLoad]) -> ModelLoad:
    """The load of the deployment's served names together."""
    parts = [loads[name] for name in deployment.served_names if name in loads]
    since = [p.waiting_since for p in parts if p.waiting_since]
    last = [p.last_request_at for p in parts if p.last_request_at]
    return ModelLoad(
        waiting=sum(p.waiting for p in parts),
        waiting_since=min(since) if since else None,
        in_flight=sum(p.in_flight for p in parts),
        last_request_at=max(last) if last else None,
    )


def idle_for(deployment: Deployment, demand: ModelLoad, now: datetime) -> float:
    """Seconds since the last request, or since the deployment last changed when that is later."""
    moments = [t for t in (demand.last_request_at, deployment.scaled_at or deployment.created_at) if t]
    return (now - max(moments)).total_seconds()


def _epoch(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def _moment(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.get_current_timezone())


def autoscale(
    deployment: Deployment, instances: Iterable[Instance], demand: ModelLoad, now: datetime
) -> None:
    """Set the deployment's replicas from its load; record a change as an event with its reason."""
    if not deployment.autoscaled:
        return
    new = [i for i in instances if i.wanted and i.generation == deployment.generation]
    identities = [i.identity for i in new]
    online = Worker.objects.online().filter(identity__in=identities)
    beats = online.aggregate(f=Sum("in_flight"), q=Sum("queued"))
    oldest = (now - demand.waiting_since).total_seconds() if demand.waiting_since else 0.0
    load = Load(
        replicas=deployment.replicas,
        ready=sum(i.state == InstanceState.READY for i in new),
        slots_per_replica=deployment.max_concurrency,
        in_flight=max(demand.in_flight - demand.waiting, (beats["f"] or 0) + (beats["q"] or 0)),
        waiting=demand.waiting,
        oldest_wait=max(0.0, oldest),
        idle_for=idle_for(deployment, demand, now),
    )
    decision = decide(policy_of(deployment), load, memory_of(deployment), now.timestamp())
    apply(deployment, decision, now)


def policy_of(deployment: Deployment) -> Policy:
    return Policy(
        min_replicas=deployment.min_replicas or 0,
        max_replicas=deployment.max_replicas or 0,
        idle_seconds=deployment.idle_seconds,
        target_queue_wait=deployment.target_queue_wait,
        target_in_flight=deployment.target_in_flight,
        scale_up_after=deployment.scale_up_after,
        cooldown=deployment.cooldown,
    )


def memory_of(deployment: Deployment) -> Memory:
    return Memory(
        _epoch(deployment.high_load_since), _epoch(deployment.low_load_since), _epoch(deployment.scaled_at)
    )


def apply(deployment: Deployment, decision: Decision, now: datetime) -> None:
    """Write the decision's replicas and memory (only what changed), and its event."""
    fields = {
        "replicas": decision.replicas,
        "high_load_since": _moment(decision.memory.high_since),
        "low_load_since": _moment(decision.memory.low_since),
        "scaled_at": _moment(decision.memory.changed_at),
    }
    changed = {k: v for k, v in fields.items() if getattr(deployment, k) != v}
    if decision.action:
        record(deployment, decision.action, decision.replicas, decision.reason, now)
    if changed:
        for name, value in changed.items():
            setattr(deployment, name, value)
        Deployment.objects.filter(pk=deployment.pk).update(**changed)


def record(deployment: Deployment, action: str, replicas: int, reason: str, now: datetime) -> None:
    """One event in the deployment's log (the newest EVENTS_KEPT are kept)."""
    logger.info("%s: %d → %d replica(s): %s", deployment.name, deployment.replicas, replicas, reason)
    DeploymentEvent.objects.create(
        deployment=deployment,
        at=now,
        action=action,
        replicas_before=deployment.replicas,
        replicas_after=replicas,
        reason=reason[:500],
    )
    old = DeploymentEvent.objects.filter(deployment=deployment).values_list("pk", flat=True)[EVENTS_KEPT:]
    if old:
        DeploymentEvent.objects.filter(pk__in=list(old)).delete()
