"""How many replicas a deployment wants, and whom to evict for a waiting one: pure functions over snapshots.

No database here: the scheduler builds the snapshots (load from the portals'
demand rows and the workers' heartbeats, the memory of when the load turned
high or low from the deployment row), and the tests build them by hand.

- From zero: a request waiting for a cold model starts one replica at once.
- Up: the queue waited longer than its target, or the requests in flight
  exceed `target_in_flight` of the ready replicas' slots, for `scale_up_after`
  seconds, and every replica asked for is ready: enough replicas for the
  load at the target share, at least one more.
- Down: load that fits one replica fewer for `cooldown` seconds removes
  one, then one more every DOWN_STEP_SECONDS while it stays low.
- To zero: with `min_replicas` 0, no request for `idle_seconds`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from fleet.placement import NodeSnapshot, Want, choose_node

# Between two scale-down steps once the cooldown has passed: the cooldown already showed the load is
# low, and each step re-checks that it fits one replica fewer, so the rest follow within seconds.
DOWN_STEP_SECONDS = 3.0
EVICT_QUIET_SECONDS = 2.0  # a deployment asked for more recently than this is serving: never evicted


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    idle_seconds: float = 600.0
    target_queue_wait: float = 1.0
    target_in_flight: float = 0.8
    scale_up_after: float = 15.0
    cooldown: float = 60.0


@dataclass(frozen=True)
class Load:
    replicas: int  # asked for now
    ready: int
    slots_per_replica: int  # a worker's max concurrency
    in_flight: int = 0
    waiting: int = 0
    oldest_wait: float = 0.0  # seconds the oldest waiting request has waited
    idle_for: float = 0.0  # seconds since the last request (or since the last change)


@dataclass(frozen=True)
class Memory:
    """When the load turned high or low, and when the replicas last changed (epoch seconds)."""

    high_since: float | None = None
    low_since: float | None = None
    changed_at: float | None = None


@dataclass(frozen=True)
class Decision:
    replicas: int
    memory: Memory
    action: str = ""  # "" when nothing changes; else a ScaleAction value
    reason: str = ""


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def decide(policy: Policy, load: Load, memory: Memory, now: float) -> Decision:
    """The replicas `load` calls for, the memory to keep, and why in a sentence."""
    current = load.replicas
    if current < policy.min_replicas or current > policy.max_replicas:
        target = min(max(current, policy.min_replicas), policy.max_replicas)
        why = f"kept within min {policy.min_replicas} and max {policy.max_replicas}"
        return Decision(target, Memory(changed_at=now), "bounds", why)
    if current == 0:
        if (load.waiting or load.in_flight) and policy.max_replicas > 0:
            why = f"{_plural(load.waiting or load.in_flight, 'request')} waiting for a cold model"
            return Decision(1, Memory(changed_at=now), "cold_start", why)
        return Decision(0, Memory(changed_at=memory.changed_at))
    # Never while a replica asked for is still loading: its model has not been offered yet.
    idle = (
        not (load.waiting or load.in_flight)
        and load.idle_for >= policy.idle_seconds
        and load.ready >= current
    )
    if policy.min_replicas == 0 and idle:
        why = f"no request for {load.idle_for:.0f} s (idle seconds {policy.idle_seconds:g})"
        return Decision(0, Memory(changed_at=now), "zero", why)
    slots = max(1, load.slots_per_replica)
    busy = load.in_flight + load.waiting
    queue_slow = load.waiting > 0 and load.oldest_wait > policy.target_queue_wait
    crowded = load.ready > 0 and load.in_flight > policy.target_in_flight * load.ready * slots
    high = queue_slow or crowded
    low = load.waiting == 0 and load.in_flight <= policy.target_in_flight * (current - 1) * slots
    high_since = (memory.high_since if memory.high_since is not None else now) if high else None
    low_since = (memory.low_since if memory.low_since is not None else now) if low else None
    kept = Memory(high_since, low_since, memory.changed_at)
    can_add = load.ready >= current and current < policy.max_replicas
    if high_since is not None and now - high_since >= policy.scale_up_after and can_add:
        needed = math.ceil(busy / (policy.target_in_flight * slots))
        target = min(policy.max_replicas, max(current + 1, needed))
        if queue_slow:
            why = f"the queue waited {load.oldest_wait:.1f} s > target {policy.target_queue_wait:g} s"
        else:
            share = f"{policy.target_in_flight:.0%} of {load.ready * slots} slots"
            why = f"{load.in_flight} in flight > {share}"
        why += f" for {now - high_since:.0f} s"
        return Decision(target, Memory(changed_at=now), "up", why)
    last_change = memory.changed_at if memory.changed_at is not None else -math.inf
    if (
        low
        and current > max(policy.min_replicas, 1)
        and now - low_since >= policy.cooldown  # type: ignore[operator]
        and now - last_change >= DOWN_STEP_SECONDS
    ):
        why = f"low load for {now - low_since:.0f} s: {load.in_flight} in flight fit {current - 1} replica(s)"  # type: ignore[operator]
        return Decision(current - 1, replace(kept, changed_at=now), "down", why)
    return Decision(current, kept)


@dataclass(frozen=True)
class Victim:
    """An idle deployment that could give its memory back."""

    name: str
    priority: int
    idle_for: float
    freed: Mapping[str, int] = field(default_factory=dict)  # node name → bytes its replicas reserve there


def evictable(victims: Sequence[Victim], *, priority: int) -> list[Victim]:
    """The victims a deployment of `priority` may evict, in order: lower priority, then idle longest."""
    quiet = [v for v in victims if v.priority <= priority and v.idle_for >= EVICT_QUIET_SECONDS]
    return sorted(quiet, key=lambda v: (v.priority, -v.idle_for, v.name))


def plan_eviction(want: Want, nodes: Sequence[NodeSnapshot], victims: Sequence[Victim]) -> list[Victim]:
    """The fewest victims, in `victims`' order, whose memory makes room for one replica; [] if none does."""
    current = {n.name: n for n in nodes}
    chosen: list[Victim] = []
    for victim in victims:
        helps = False
        for node_name, freed in victim.freed.items():
            node = current.get(node_name)
            if node is not None and freed > 0:
                current[node_name] = replace(node, reserved_bytes=node.reserved_bytes - freed)
                helps = True
        if not helps:
            continue
        chosen.append(victim)
        if choose_node(want, list(current.values())).node is not None:
            return chosen
    return []
