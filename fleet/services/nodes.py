"""Node bookkeeping: an agent registers its machine and heartbeats, like a worker does."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.utils import timezone

from fleet.models import Node
from registry.services.workers import heartbeat_expiry


@dataclass(frozen=True)
class NodeFacts:
    name: str
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    cpus: int = 0
    memory_bytes: int = 0
    available_memory_bytes: int = 0
    gpus: list[dict[str, Any]] = field(default_factory=list)
    catalogue: list[dict[str, Any]] = field(default_factory=list)
    agent_pid: int | None = None


def register_node(*, facts: NodeFacts, interval: float) -> Node:
    """Upsert the node by name: an agent restarted on the same machine keeps its row and instances."""
    now = timezone.now()
    node, _ = Node.objects.update_or_create(
        name=facts.name,
        defaults={
            "address": facts.address,
            "labels": facts.labels,
            "cpus": facts.cpus,
            "memory_bytes": facts.memory_bytes,
            "available_memory_bytes": facts.available_memory_bytes,
            "gpus": facts.gpus,
            "catalogue": facts.catalogue,
            "agent_pid": facts.agent_pid,
            "registered_at": now,
            "last_heartbeat": now,
            "expires_at": now + heartbeat_expiry(interval),
        },
    )
    return node


def record_node_heartbeat(*, node_id: int, available_memory_bytes: int, interval: float) -> bool:
    """Push the node's expiry forward; False when its row is gone (the agent registers again)."""
    now = timezone.now()
    return bool(
        Node.objects.filter(pk=node_id).update(
            last_heartbeat=now,
            expires_at=now + heartbeat_expiry(interval),
            available_memory_bytes=available_memory_bytes,
        )
    )


def mark_node_offline(*, node_id: int) -> None:
    Node.objects.filter(pk=node_id).update(expires_at=timezone.now())
