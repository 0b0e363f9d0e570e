"""The scheduler: turn each deployment's wish into placed instances, and roll them to a new generation.

`reconcile()` is idempotent and cheap; every agent runs it each tick and the
admin runs it after a change, so that a fleet keeps converging while any agent
is up. Runs take turns through one lock row (an UPDATE first: a row lock on
PostgreSQL, the write lock on SQLite), so two agents never place twice.

Rolling to a new generation surges by one: start a new replica, wait until it
is ready, then stop an old one, so that the ready count never drops below
`replicas`. A failed new replica stops the roll and the old ones keep serving.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from fleet.catalogue import estimate_memory, weights_bytes
from fleet.models import Deployment, Instance, InstanceState, Node, SchedulerLock
from fleet.placement import NodeSnapshot, Want, place_replicas

logger = logging.getLogger(__name__)

# A node whose agent is silent this long loses its instances: they are placed elsewhere.
NODE_LOST_AFTER = timedelta(seconds=60)
UNKNOWN_WEIGHTS = 2 * 2**30


def replica_memory(deployment: Deployment, nodes: list[Node]) -> int:
    """The operator's figure, else an estimate from the weights' size in a node's catalogue."""
    if deployment.memory_per_replica:
        return deployment.memory_per_replica
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
        nodes = list(Node.objects.online())
        instances = list(Instance.objects.select_related("deployment", "node"))
        by_deployment: dict[int, list[Instance]] = defaultdict(list)
        for instance in instances:
            by_deployment[instance.deployment_id].append(instance)
        reserved: dict[int, int] = defaultdict(int)
        for instance in instances:
            if instance.wanted:
                reserved[instance.node_id] += instance.memory_bytes
        for deployment in Deployment.objects.all():
            _reconcile_one(deployment, by_deployment[deployment.pk], nodes, reserved)


def _forget_lost_nodes() -> None:
    lost = Instance.objects.filter(node__expires_at__lt=timezone.now() - NODE_LOST_AFTER)
    if lost.exists():
        logger.warning("Forgetting %d instance(s) of nodes silent for %s", lost.count(), NODE_LOST_AFTER)
        lost.delete()


def _stop(instance: Instance) -> None:
    if instance.wanted:
        instance.wanted = False
        instance.save(update_fields=["wanted", "updated_at"])


def _reconcile_one(
    deployment: Deployment, instances: list[Instance], nodes: list[Node], reserved: dict[int, int]
) -> None:
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
        reason = _place(deployment, missing, nodes, reserved, wanted)
    if reason != deployment.pending_reason:
        deployment.pending_reason = reason
        Deployment.objects.filter(pk=deployment.pk).update(pending_reason=reason, updated_at=timezone.now())


def _place(
    deployment: Deployment, count: int, nodes: list[Node], reserved: dict[int, int], wanted: list[Instance]
) -> str:
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
    return f"{count - len(chosen)} replica(s) pending: {reason}" if reason else ""
