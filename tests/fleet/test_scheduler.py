"""The scheduler on real rows (no processes): placing, scaling, rolling, lost nodes, why pending."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from fleet.models import Deployment, Instance, InstanceState, Node
from fleet.services import deployments
from fleet.services.scheduler import NODE_LOST_AFTER, reconcile

pytestmark = pytest.mark.django_db
GIB = 2**30


def online_node(name: str, memory_gib: int = 16, **labels: str) -> Node:
    return Node.objects.create(
        name=name,
        address="127.0.0.1",
        memory_bytes=memory_gib * GIB,
        labels=labels,
        expires_at=timezone.now() + timedelta(seconds=30),
    )


def deploy(name: str = "smol", replicas: int = 2, **fields: object) -> Deployment:
    fields.setdefault("memory_per_replica", GIB)
    fields.setdefault("backend", "canned")
    return deployments.create_deployment(name=name, model_path="canned", replicas=replicas, **fields)


def wanted(deployment: Deployment) -> list[Instance]:
    return list(deployment.instances.filter(wanted=True).select_related("node").order_by("pk"))


def make_ready(instances: list[Instance]) -> None:
    Instance.objects.filter(pk__in=[i.pk for i in instances]).update(state=InstanceState.READY)


def test_a_new_deployment_is_spread_over_the_online_nodes():
    online_node("a"), online_node("b")
    deployment = deploy()
    reconcile()
    assert sorted(i.node.name for i in wanted(deployment)) == ["a", "b"]
    reconcile()  # idempotent
    assert len(wanted(deployment)) == 2


def test_scaling_down_stops_the_least_ready_and_newest_first():
    online_node("a")
    deployment = deploy(replicas=3)
    reconcile()
    first, _second, third = wanted(deployment)
    make_ready([first, third])
    deployments.scale(deployment, 1)
    reconcile()
    assert wanted(deployment) == [first]


def test_a_changed_option_rolls_one_replica_at_a_time_keeping_the_ready_count():
    online_node("a"), online_node("b")
    deployment = deploy()
    reconcile()
    old = wanted(deployment)
    make_ready(old)
    deployment.max_concurrency = 4
    deployments.save_deployment(deployment)
    assert deployment.generation == 2
    reconcile()
    after = wanted(deployment)
    assert len(after) == 3
    assert [i.generation for i in after] == [1, 1, 2]
    reconcile()
    assert len(wanted(deployment)) == 3  # nothing more until the new one is ready
    make_ready([after[2]])
    reconcile()
    after = wanted(deployment)
    assert [i.generation for i in after] == [1, 2, 2]  # one old stopped, the next new one placed
    make_ready([after[2]])
    reconcile()
    assert [i.generation for i in wanted(deployment)] == [2, 2]


def test_a_failed_new_replica_stops_the_roll_and_the_old_ones_keep_serving():
    online_node("a")
    deployment = deploy()
    reconcile()
    make_ready(wanted(deployment))
    deployments.restart(deployment)
    reconcile()
    new = wanted(deployment)[-1]
    Instance.objects.filter(pk=new.pk).update(state=InstanceState.FAILED)
    reconcile()
    assert [i.generation for i in wanted(deployment)] == [1, 1, 2]


def test_a_restart_replaces_a_failed_replica_at_once():
    online_node("a")
    deployment = deploy(replicas=1)
    reconcile()
    (failed,) = wanted(deployment)
    Instance.objects.filter(pk=failed.pk).update(state=InstanceState.FAILED)
    deployments.restart(deployment)
    reconcile()
    (replacement,) = wanted(deployment)
    assert replacement.generation == 2


def test_only_worker_options_raise_the_generation():
    online_node("a")
    deployment = deploy()
    deployment.replicas = 3
    deployment.placement = "pack"
    deployments.save_deployment(deployment)
    assert deployment.generation == 1
    deployment.extra_args = "--max-queue 8"
    deployments.save_deployment(deployment)
    assert deployment.generation == 2


def test_instances_of_a_node_silent_too_long_are_placed_elsewhere():
    gone = online_node("gone")
    deployment = deploy(replicas=1)
    reconcile()
    assert wanted(deployment)[0].node == gone
    Node.objects.filter(pk=gone.pk).update(expires_at=timezone.now() - NODE_LOST_AFTER - timedelta(seconds=1))
    online_node("spare")
    reconcile()
    assert [i.node.name for i in wanted(deployment)] == ["spare"]


def test_a_deployment_that_fits_nowhere_says_why_it_is_pending():
    online_node("small", memory_gib=4)
    deployment = deploy(replicas=2, memory_per_replica=3 * GIB)
    reconcile()
    deployment.refresh_from_db()
    assert len(wanted(deployment)) == 1
    assert deployment.pending_reason.startswith("1 replica(s) pending: no node has 3.0 GiB free (small has")
    deployments.scale(deployment, 1)
    reconcile()
    deployment.refresh_from_db()
    assert deployment.pending_reason == ""


def test_required_labels_keep_replicas_off_other_nodes():
    online_node("cpu"), online_node("gpu", gpu="a100")
    deployment = deploy(replicas=2, required_labels={"gpu": "a100"})
    reconcile()
    assert {i.node.name for i in wanted(deployment)} == {"gpu"}


def test_memory_is_estimated_from_the_catalogue_when_not_given():
    Node.objects.create(
        name="a",
        address="127.0.0.1",
        memory_bytes=16 * GIB,
        catalogue=[{"path": "/models/m.gguf", "bytes": GIB}],
        expires_at=timezone.now() + timedelta(seconds=30),
    )
    deployment = deployments.create_deployment(name="m", model_path="/models/m.gguf", replicas=1)
    reconcile()
    assert wanted(deployment)[0].memory_bytes == 768 * 2**20 + 2 * GIB


def test_a_canned_replica_reserves_a_bare_worker_not_unknown_weights():
    online_node("a", memory_gib=8)
    deployment = deployments.create_deployment(name="c", model_path="canned", backend="canned", replicas=24)
    reconcile()
    # 256 MiB each: 24 of them in the 90% of 8 GiB a node lends; an unknown model's 4.75 GiB held one.
    assert len(wanted(deployment)) == 24
    assert wanted(deployment)[0].memory_bytes == 256 * 2**20


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("--port 9", "--port is set by the deployment's own fields"),
        ("--no-such-flag", "'--no-such-flag' is not an option a deployment may set"),
        ("--seed x", "argument --seed: invalid int value: 'x'"),
        ("--max-queue 'x", "No closing quotation"),
    ],
)
def test_extra_options_are_checked_against_runworker(extra, message):
    with pytest.raises(ValidationError, match=message):
        deploy(extra_args=extra)
