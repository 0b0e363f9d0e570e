"""Where a replica goes: a pure function over snapshots of the nodes and of what they already hold.

No database here: the scheduler builds the snapshots, and the tests build them by hand.
A node has room when its memory, less a tenth kept for the system, less what its
instances already reserved, holds the replica's estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

SYSTEM_SHARE = 0.1  # of each node's memory, never reserved for workers


@dataclass(frozen=True)
class NodeSnapshot:
    name: str
    memory_bytes: int
    labels: Mapping[str, str]
    reserved_bytes: int = 0  # the estimates of the instances it holds
    replicas_here: int = 0  # of the deployment being placed

    @property
    def free_bytes(self) -> int:
        return int(self.memory_bytes * (1 - SYSTEM_SHARE)) - self.reserved_bytes


@dataclass(frozen=True)
class Want:
    """One replica to place."""

    memory_bytes: int
    strategy: str = "spread"  # or "pack"
    required_labels: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Choice:
    node: str | None
    reason: str = ""  # why no node, when node is None


def gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB"


def choose_node(want: Want, nodes: Sequence[NodeSnapshot]) -> Choice:
    """The node for one replica, or None and the reason in a sentence an operator can act on."""
    if not nodes:
        return Choice(None, "no node is online: start `manage.py runagent` on a machine")
    required = dict(want.required_labels or {})
    matching = [n for n in nodes if all(str(n.labels.get(k)) == str(v) for k, v in required.items())]
    if not matching:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(required.items()))
        return Choice(None, f"no online node has the labels {labels}")
    roomy = [n for n in matching if n.free_bytes >= want.memory_bytes]
    if not roomy:
        free = "; ".join(f"{n.name} has {gib(max(0, n.free_bytes))}" for n in matching)
        return Choice(None, f"no node has {gib(want.memory_bytes)} free ({free})")
    if want.strategy == "pack":
        # The fullest node that still fits: whole nodes stay free for large models.
        best = min(roomy, key=lambda n: (n.free_bytes, n.name))
    else:
        best = min(roomy, key=lambda n: (n.replicas_here, -n.free_bytes, n.name))
    return Choice(best.name)


def place_replicas(count: int, want: Want, nodes: Sequence[NodeSnapshot]) -> tuple[list[str], str]:
    """Place `count` replicas one after another (each one reserves its memory); names and why any is left."""
    current = {n.name: n for n in nodes}
    chosen: list[str] = []
    for _ in range(count):
        choice = choose_node(want, list(current.values()))
        if choice.node is None:
            return chosen, choice.reason
        node = current[choice.node]
        current[node.name] = NodeSnapshot(
            node.name,
            node.memory_bytes,
            node.labels,
            node.reserved_bytes + want.memory_bytes,
            node.replicas_here + 1,
        )
        chosen.append(node.name)
    return chosen, ""
