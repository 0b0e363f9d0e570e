"""The autoscaler's decisions and the eviction plan, as pure functions over hand-built snapshots."""

from __future__ import annotations

from fleet.autoscale import (
    DOWN_STEP_SECONDS,
    Load,
    Memory,
    Policy,
    Victim,
    decide,
    evictable,
    plan_eviction,
)
from fleet.placement import NodeSnapshot, Want

GIB = 2**30
POLICY = Policy(min_replicas=1, max_replicas=4, idle_seconds=600, scale_up_after=15, cooldown=60)


def test_a_request_for_a_cold_model_starts_one_replica_at_once():
    cold = Policy(min_replicas=0, max_replicas=3)
    decision = decide(cold, Load(replicas=0, ready=0, slots_per_replica=4, waiting=2), Memory(), now=100)
    assert (decision.replicas, decision.action) == (1, "cold_start")
    assert "2 requests waiting for a cold model" in decision.reason
    idle = decide(cold, Load(replicas=0, ready=0, slots_per_replica=4), Memory(), now=100)
    assert (idle.replicas, idle.action) == (0, "")


def test_high_load_scales_up_only_after_it_lasted_scale_up_after_seconds():
    load = Load(replicas=1, ready=1, slots_per_replica=4, in_flight=4, waiting=6, oldest_wait=3.0)
    first = decide(POLICY, load, Memory(), now=100)
    assert (first.replicas, first.memory.high_since) == (1, 100)
    early = decide(POLICY, load, first.memory, now=110)
    assert early.replicas == 1
    late = decide(POLICY, load, early.memory, now=115)
    # 10 requests at 80% of 4 slots: 4 replicas (the max), not just one more.
    assert (late.replicas, late.action) == (4, "up")
    assert "the queue waited 3.0 s > target 1 s for 15 s" in late.reason


def test_in_flight_above_the_target_share_scales_up_one_at_least():
    load = Load(replicas=2, ready=2, slots_per_replica=10, in_flight=17)
    memory = Memory(high_since=0)
    decision = decide(POLICY, load, memory, now=20)
    assert (decision.replicas, decision.action) == (3, "up")
    assert "17 in flight > 80% of 20 slots" in decision.reason


def test_no_scale_up_while_replicas_asked_for_are_still_starting():
    load = Load(replicas=2, ready=1, slots_per_replica=4, in_flight=4, waiting=5, oldest_wait=9)
    assert decide(POLICY, load, Memory(high_since=0), now=100).replicas == 2


def test_low_load_removes_one_replica_after_the_cooldown_then_one_per_step():
    load = Load(replicas=4, ready=4, slots_per_replica=4, in_flight=1, idle_for=1)
    memory = decide(POLICY, load, Memory(changed_at=0), now=100).memory
    assert memory.low_since == 100
    assert decide(POLICY, load, memory, now=159).replicas == 4
    down = decide(POLICY, load, memory, now=160)
    assert (down.replicas, down.action) == (3, "down")
    assert "low load for 60 s" in down.reason
    again = decide(POLICY, Load(replicas=3, ready=3, slots_per_replica=4, in_flight=1), down.memory, now=161)
    assert again.replicas == 3  # one step at a time
    later = decide(
        POLICY,
        Load(replicas=3, ready=3, slots_per_replica=4, in_flight=1),
        down.memory,
        now=160 + DOWN_STEP_SECONDS,
    )
    assert later.replicas == 2
    at_min = decide(POLICY, Load(replicas=1, ready=1, slots_per_replica=4), Memory(low_since=0), now=1000)
    assert at_min.replicas == 1


def test_no_load_brings_max_replicas_back_to_min_within_the_cooldown_and_30_s():
    policy = Policy(min_replicas=1, max_replicas=6, scale_up_after=5, cooldown=15)
    replicas, memory, now = 6, Memory(changed_at=0), 0.0
    while replicas > 1 and now < 100:  # a scheduler tick every half second; removed replicas go at once
        load = Load(replicas=replicas, ready=replicas, slots_per_replica=2, idle_for=now)
        decision = decide(policy, load, memory, now)
        replicas, memory, now = decision.replicas, decision.memory, now + 0.5
    assert replicas == 1
    assert now <= policy.cooldown + 30


def test_load_that_would_not_fit_one_replica_fewer_keeps_them():
    load = Load(replicas=2, ready=2, slots_per_replica=4, in_flight=4)
    assert decide(POLICY, load, Memory(low_since=0, changed_at=0), now=1000).replicas == 2


def test_idle_seconds_scale_a_min_zero_deployment_to_zero_never_one_with_requests():
    policy = Policy(min_replicas=0, max_replicas=2, idle_seconds=30)
    idle = Load(replicas=1, ready=1, slots_per_replica=4, idle_for=31)
    decision = decide(policy, idle, Memory(), now=100)
    assert (decision.replicas, decision.action) == (0, "zero")
    assert "no request for 31 s" in decision.reason
    busy = Load(replicas=1, ready=1, slots_per_replica=4, in_flight=1, idle_for=31)
    assert decide(policy, busy, Memory(), now=100).replicas == 1
    assert decide(POLICY, idle, Memory(), now=100).replicas == 1  # min 1: never to zero
    loading = Load(replicas=1, ready=0, slots_per_replica=4, idle_for=31)
    assert decide(policy, loading, Memory(), now=100).replicas == 1  # still loading: not idle yet


def test_new_bounds_clamp_the_replicas():
    load = Load(replicas=6, ready=6, slots_per_replica=4)
    decision = decide(POLICY, load, Memory(), now=1)
    assert (decision.replicas, decision.action) == (4, "bounds")


def node(name: str, gib: int, reserved_gib: float = 0) -> NodeSnapshot:
    return NodeSnapshot(name, gib * GIB, {}, int(reserved_gib * GIB))


def test_eviction_takes_the_lowest_priority_then_the_longest_idle_and_only_what_is_needed():
    victims = [
        Victim("recent", priority=0, idle_for=5, freed={"a": 4 * GIB}),
        Victim("old", priority=0, idle_for=500, freed={"a": 4 * GIB}),
        Victim("important", priority=5, idle_for=900, freed={"a": 4 * GIB}),
        Victim("busy-just-now", priority=0, idle_for=0.5, freed={"a": 4 * GIB}),
    ]
    ordered = evictable(victims, priority=1)
    assert [v.name for v in ordered] == ["old", "recent"]  # higher priority and just-served ones stay
    nodes = [node("a", 10, reserved_gib=8)]  # 9 GiB usable, 1 free
    assert [v.name for v in plan_eviction(Want(4 * GIB), nodes, ordered)] == ["old"]
    assert [v.name for v in plan_eviction(Want(6 * GIB), nodes, ordered)] == ["old", "recent"]


def test_no_eviction_when_evicting_cannot_make_room():
    victims = [Victim("elsewhere", 0, 100, freed={"b": 4 * GIB}), Victim("small", 0, 100, freed={"a": GIB})]
    nodes = [node("a", 10, reserved_gib=8), node("b", 10, reserved_gib=8)]
    want = Want(4 * GIB, required_labels={"gpu": "yes"})
    assert plan_eviction(want, nodes, victims) == []  # no node has the labels
    assert plan_eviction(Want(20 * GIB), nodes, victims) == []  # too big for any node
