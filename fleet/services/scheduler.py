"""The scheduler: turn each deployment's wish into placed instances, and roll them to a new generation.

`reconcile()` is idempotent and cheap; every agent runs it each tick and the
admin runs it after a change, so that a fleet keeps converging while any agent
is up. Runs take turns through one lock row (an UPDATE first: a row lock on
PostgreSQL, the write lock on SQLite), so two agents never place twice.

An autoscaled deployment's replicas are set first, from its load
(`fleet.services.autoscaler`). Deployments with requests waiting are placed
first (higher priority first); when one finds no node with room, idle
deployments that may scale to zero are evicted for it (`fleet.autoscale`).

Rolling to a new generation surges by one: start a new replica, wait until it
is ready, then stop an old one, so that the ready count never drops below
`replicas`. A failed new replica stops the roll and the old ones keep serving.

A deployment that runs on Kubernetes is autoscaled here like any other, but
its replicas are the cluster's pods (`fleet.kube`): the scheduler places none
and only stops what agents still run of it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from fleet.autoscale import Victim, evictable, plan_eviction
from fleet.catalogue import estimate_memory, weights_bytes
from fleet.models import (
    KUBE_NODE_PREFIX,
    Backend,
    Deployment,
    Instance,
    InstanceState,
    Node,
    RunsOn,
    ScaleAction,
    SchedulerLock,
)
from fleet.placement import NodeSnapshot, Want, place_replicas
from fleet.services.autoscaler import ModelLoad, autoscale, demand_of, model_loads, record
from registry.models import ServedModel

logger = logging.getLogger(__name__)

# A node whose agent is silent this long loses its instances: they are placed elsewhere.
NODE_LOST_AFTER = timedelta(seconds=60)
UNKNOWN_WEIGHTS = 2 * 2**30
# The canned engine loads no weights and no torch: its worker is Django and the HTTP app (~130 MB resident).
CANNED_BYTES = 256 * 2**20


def replica_memory(deployment: Deployment, nodes: list[Node]) -> int:
    """The operator's figure, else an estimate from the weights' size in a node's catalogue."""
    if deployment.memory_per_replica:
        return deployment.memory_per_replica
    if deployment.backend == Backend.CANNED:
        return CANNED_BYTES  # its model path is a label, not weights
    for node in nodes:
        for entry in node.catalogue:
            if entry.get("path") == deployment.model_path:
                return estimate_memory(int(entry.get("bytes", 0)))
    local = Path(deployment.model_path).expanduser()
    return estimate_memory(weights_bytes(local) if local.exists() else UNKNOWN_WEIGHTS)


def reconcile() -> None:
    """Bring every deployment's instances in line with its replicas and generation."""
    SchedulerLock.objects.get_or_create(pk=1)
    with transaction.atomic():
        SchedulerLock.objects.filter(pk=1).update(last_run_at=timezone.now())
        _forget_lost_nodes()
        nodes = list(Node.objects.online().exclude(name__startswith=KUBE_NODE_PREFIX))
        instances = list(Instance.objects.select_related("deployment", "node"))
        by_deployment: dict[int, list[Instance]] = defaultdict(list)
        for instance in instances:
            by_deployment[instance.deployment_id].append(instance)
        reserved: dict[int, int] = defaultdict(int)
        for instance in instances:
            if instance.wanted:
                reserved[instance.node_id] += instance.memory_bytes
        now = timezone.now()
        loads = model_loads(now)
        fleet = _Fleet(nodes, reserved, by_deployment, {}, now)
        for deployment in Deployment.objects.all():
            fleet.demand[deployment.pk] = demand_of(deployment, loads)
            autoscale(deployment, by_deployment[deployment.pk], fleet.demand[deployment.pk], now)
        # Those with requests waiting first (higher priority first): they may evict idle ones.
        for deployment in sorted(Deployment.objects.all(), key=fleet.urgency):
            if deployment.runs_on == RunsOn.KUBERNETES:
                _reconcile_kube(deployment, fleet)
            else:
                _reconcile_one(deployment, fleet)


@dataclass
class _Fleet:
    """What one scheduler run knows: the nodes, their reservations, every deployment's replicas and load."""

    nodes: list[Node]
    reserved: dict[int, int]
    instances: dict[int, list[Instance]]
    demand: dict[int, ModelLoad]
    now: datetime

    def urgency(self, deployment: Deployment) -> tuple[bool, int, str]:
        return (not self.demand[deployment.pk].waiting, -deployment.priority, deployment.name)


def _name_models(deployment: Deployment) -> None:
    """Its served names exist before any replica registers them: a request for a cold model queues, no 404."""
    for name in deployment.served_names:
        ServedModel.objects.get_or_create(name=name)


def _forget_lost_nodes() -> None:
    lost = Instance.objects.filter(node__expires_at__lt=timezone.now() - NODE_LOST_AFTER)
    if lost.exists():
        logger.warning("Forgetting %d instance(s) of nodes silent for %s", lost.count(), NODE_LOST_AFTER)
        lost.delete()


def _stop(instance: Instance) -> None:
    if instance.wanted:
        instance.wanted = False
        instance.save(update_fields=["wanted", "updated_at"])


def _reconcile_kube(deployment: Deployment, fleet: _Fleet) -> None:
    """Stop what agents still run of a deployment moved to Kubernetes; name a cold one's models."""
    for instance in fleet.instances[deployment.pk]:
        if instance.wanted and not instance.node.name.startswith(KUBE_NODE_PREFIX):
            _stop(instance)
            fleet.reserved[instance.node_id] -= instance.memory_bytes
    if deployment.cold:
        _name_models(deployment)


def _reconcile_one(deployment: Deployment, fleet: _Fleet) -> None:
    instances, nodes, reserved = fleet.instances[deployment.pk], fleet.nodes, fleet.reserved
    wanted = [i for i in instances if i.wanted]
    new = [i for i in wanted if i.generation == deployment.generation]
    old = [i for i in wanted if i.generation != deployment.generation]
    ready_new = sum(i.state == InstanceState.READY for i in new)
    # An old replica that is not ready serves nothing: it goes at once. Ready ones go as new ones
    # become ready.
    keep_old = max(0, deployment.replicas - ready_new)
    for instance in sorted(old, key=lambda i: (i.state == InstanceState.READY, i.pk)):
        if instance.state != InstanceState.READY or sum(i.wanted for i in old) > keep_old:
            _stop(instance)
            reserved[instance.node_id] -= instance.memory_bytes
    old = [i for i in old if i.wanted]
    # Too many new ones: the newest and the least ready go first.
    surplus = len(new) - deployment.replicas
    for instance in sorted(new, key=lambda i: (i.state == InstanceState.READY, -i.pk))[: max(0, surplus)]:
        _stop(instance)
        reserved[instance.node_id] -= instance.memory_bytes
    missing = deployment.replicas - len(new)
    if old and missing > 0:
        # Rolling: one new replica at a time, and only once the last one is ready.
        missing = 0 if ready_new < len(new) else 1
    reason = ""
    if missing > 0:
        placed, reason = _place(deployment, missing, nodes, reserved, wanted)
        if reason and fleet.demand[deployment.pk].waiting and _evict_for(deployment, fleet):
            _, reason = _place(deployment, missing - placed, nodes, reserved, wanted)
    if deployment.autoscaled and (reason or deployment.replicas == 0):
        _name_models(deployment)
    if reason != deployment.pending_reason:
        deployment.pending_reason = reason
        Deployment.objects.filter(pk=deployment.pk).update(pending_reason=reason, updated_at=timezone.now())


def _evict_for(deployment: Deployment, fleet: _Fleet) -> bool:
    """Scale idle min-0 deployments to zero until one replica of `deployment` fits; whether any was."""
    by_node = {n.pk: n.name for n in fleet.nodes}
    victims: dict[str, Deployment] = {}
    candidates = []
    elastic = Deployment.objects.filter(min_replicas=0, replicas__gt=0, runs_on=RunsOn.AGENTS)
    for other in elastic.exclude(pk=deployment.pk):
        demand = fleet.demand.get(other.pk, ModelLoad())
        if demand.waiting or demand.in_flight:
            continue  # serving: never evicted
        freed: dict[str, int] = defaultdict(int)
        for instance in fleet.instances[other.pk]:
            if instance.wanted and instance.node_id in by_node:
                freed[by_node[instance.node_id]] += instance.memory_bytes
        victims[other.name] = other
        last = demand.last_request_at or other.scaled_at or other.created_at
        candidates.append(Victim(other.name, other.priority, (fleet.now - last).total_seconds(), freed))
    memory = replica_memory(deployment, fleet.nodes)
    want = Want(memory, deployment.placement, deployment.required_labels)
    ordered = evictable(candidates, priority=deployment.priority)
    chosen = plan_eviction(want, _snapshots(fleet, deployment), ordered)
    waiting = fleet.demand[deployment.pk].waiting
    for victim in chosen:
        other = victims[victim.name]
        why = f"evicted for {deployment.name} ({waiting} request(s) waiting); idle {victim.idle_for:.0f} s"
        record(other, ScaleAction.EVICTED, 0, why, fleet.now)
        Deployment.objects.filter(pk=other.pk).update(replicas=0, scaled_at=fleet.now, updated_at=fleet.now)
        other.replicas = 0
        for instance in fleet.instances[other.pk]:
            if instance.wanted:
                _stop(instance)
                fleet.reserved[instance.node_id] -= instance.memory_bytes
        why = f"evicted {other.name} (priority {other.priority}, idle {victim.idle_for:.0f} s) to make room"
        record(deployment, ScaleAction.EVICTED, deployment.replicas, why, fleet.now)
    return bool(chosen)


def _snapshots(fleet: _Fleet, deployment: Deployment) -> list[NodeSnapshot]:
    here: dict[int, int] = defaultdict(int)
    for instance in fleet.instances[deployment.pk]:
        if instance.wanted:
            here[instance.node_id] += 1
    return [
        NodeSnapshot(n.name, n.memory_bytes, n.labels, fleet.reserved[n.pk], here[n.pk]) for n in fleet.nodes
    ]


def _place(
    deployment: Deployment, count: int, nodes: list[Node], reserved: dict[int, int], wanted: list[Instance]
) -> tuple[int, str]:
    """Place up to `count` replicas; how many were placed, and why the rest are pending."""
    memory = replica_memory(deployment, nodes)
    here: dict[int, int] = defaultdict(int)
    for instance in wanted:
        here[instance.node_id] += 1
    snapshots = [NodeSnapshot(n.name, n.memory_bytes, n.labels, reserved[n.pk], here[n.pk]) for n in nodes]
    want = Want(memory, deployment.placement, deployment.required_labels)
    chosen, reason = place_replicas(count, want, snapshots)
    by_name = {n.name: n for n in nodes}
    for name in chosen:
        node = by_name[name]
        Instance.objects.create(
            deployment=deployment, node=node, generation=deployment.generation, memory_bytes=memory
        )
        reserved[node.pk] += memory
    if chosen:
        logger.info("Placed %d replica(s) of %s on %s", len(chosen), deployment.name, ", ".join(chosen))
    return len(chosen), f"{count - len(chosen)} replica(s) pending: {reason}" if reason else ""
