"""Placement is a pure function over node snapshots: spread, pack, labels, and why nothing fits."""

from __future__ import annotations

from fleet.placement import NodeSnapshot, Want, choose_node, place_replicas

GIB = 2**30


def node(name: str, memory_gib: float = 10, labels: dict[str, str] | None = None, reserved_gib: float = 0):
    return NodeSnapshot(name, int(memory_gib * GIB), labels or {}, int(reserved_gib * GIB))


def test_spread_puts_each_replica_on_another_node_while_it_can():
    nodes = [node("a"), node("b"), node("c")]
    chosen, reason = place_replicas(4, Want(GIB, "spread"), nodes)
    assert sorted(chosen[:3]) == ["a", "b", "c"]
    assert len(chosen) == 4
    assert reason == ""


def test_spread_prefers_the_node_with_more_room_among_equals():
    assert choose_node(Want(GIB), [node("a", reserved_gib=5), node("b", reserved_gib=1)]).node == "b"


def test_pack_fills_the_fullest_node_that_fits_before_the_next():
    nodes = [node("big", 20), node("small", 4)]
    chosen, _ = place_replicas(4, Want(GIB, "pack"), nodes)
    # small holds 3 GiB (4 less the tenth kept for the system), then big takes the rest.
    assert chosen == ["small", "small", "small", "big"]


def test_required_labels_choose_among_matching_nodes_only():
    nodes = [node("cpu", 64, {"gpu": "none"}), node("gpu", 8, {"gpu": "a100", "zone": "a"})]
    assert choose_node(Want(GIB, required_labels={"gpu": "a100"}), nodes).node == "gpu"


def test_no_node_with_the_labels_says_which_labels():
    choice = choose_node(Want(GIB, required_labels={"gpu": "h100"}), [node("a", labels={"gpu": "a100"})])
    assert choice.node is None
    assert choice.reason == "no online node has the labels gpu=h100"


def test_no_room_says_how_much_is_wanted_and_what_each_node_has():
    choice = choose_node(Want(4 * GIB), [node("a", 4), node("b", 10, reserved_gib=7)])
    assert choice.node is None
    assert choice.reason == "no node has 4.0 GiB free (a has 3.6 GiB; b has 2.0 GiB)"


def test_replicas_that_fit_are_placed_and_the_rest_are_explained():
    chosen, reason = place_replicas(3, Want(4 * GIB), [node("a", 10)])
    assert chosen == ["a", "a"]
    assert reason.startswith("no node has 4.0 GiB free")


def test_no_node_at_all_says_to_start_an_agent():
    assert "runagent" in choose_node(Want(GIB), []).reason
