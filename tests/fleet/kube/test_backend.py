"""The Kubernetes backend against an in-memory API server, through the real client over HTTP.

No worker starts here: the deployments ask for a node label the test node
lacks, so their pods stay pending (unscheduled), as they would on a cluster
without such a node.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from fleet.kube.agent import KubeAgent, KubeAgentOptions
from fleet.kube.backend import FIELD_MANAGER, PodWatch
from fleet.kube.render import ClusterConfig, object_name, render_deployment
from fleet.kube.status import pod_replica
from fleet.models import Deployment, Instance, InstanceState, Node
from fleet.services import deployments, leases
from fleet.services.scheduler import reconcile
from registry.models import ServedModel
from tests.fleet.kube.conftest import NAMESPACE
from tests.processes import wait_for

CONFIG = ClusterConfig(namespace=NAMESPACE)


def unscheduled(**fields: Any) -> Deployment:
    values = {"name": "big", "model_path": "canned", "backend": "canned", "required_labels": {"gpu": "h100"}}
    return Deployment(**(values | fields))


def rendered(row: Deployment, replicas: int | None = 2) -> dict[str, Any]:
    return render_deployment(row, CONFIG, memory_bytes=2**30, replicas=replicas)


def test_apply_creates_then_updates_under_one_field_manager(kube, cluster):
    kube.apply(rendered(unscheduled()))
    kube.apply(rendered(unscheduled()))  # unchanged: the same generation
    (created,) = cluster.deployments()
    assert created["metadata"]["generation"] == 1
    assert created["metadata"]["managedFields"][0]["manager"] == FIELD_MANAGER
    kube.apply(rendered(unscheduled(generation=2), replicas=None))
    (rolled,) = cluster.deployments()
    assert rolled["metadata"]["generation"] == 2
    assert rolled["spec"]["template"]["metadata"]["labels"]["fleet.modelportal.io/generation"] == "2"
    assert rolled["spec"]["replicas"] == 2  # an apply without replicas leaves them
    applies = [r for r in cluster.server.requests if r[0] == "PATCH"]
    assert {content for _, _, content in applies} == {"application/apply-patch+yaml"}
    assert all(f"fieldManager={FIELD_MANAGER}" in path and "force=true" in path for _, path, _ in applies)


def test_replicas_go_through_the_scale_subresource(kube, cluster):
    kube.apply(rendered(unscheduled(), replicas=1))
    kube.scale(object_name(unscheduled()), 3)
    assert cluster.deployments()[0]["spec"]["replicas"] == 3
    assert wait_for(lambda: len(cluster.pods()) == 3, timeout=5)
    assert any(path.endswith("/scale") or "/scale?" in path for _, path, _ in cluster.server.requests)
    assert set(kube.deployments()) == {"worker-big"}
    kube.delete("worker-big")
    kube.delete("worker-big")  # already gone: not an error
    assert wait_for(lambda: not cluster.pods(), timeout=5)


def test_the_pod_watch_follows_a_list_with_a_watch(kube, cluster):
    watch = PodWatch(kube)
    watch.start()
    try:
        assert watch.synced.wait(5)
        kube.apply(rendered(unscheduled(), replicas=2))
        assert wait_for(lambda: len(watch.snapshot()) == 2, timeout=5)
        replica = pod_replica(watch.snapshot()[0])
        assert replica is not None
        assert replica.state == "pending"
        assert "didn't match Pod's node affinity/selector" in replica.detail
        kube.scale("worker-big", 0)
        assert wait_for(lambda: not watch.snapshot(), timeout=5)
    finally:
        watch.stopping.set()


@pytest.mark.django_db(transaction=True)
def test_the_leading_agent_realises_rows_and_reports_pending_pods(kube, cluster):
    row = deployments.create_deployment(
        name="big", model_path="canned", backend="canned", replicas=2, runs_on="kubernetes",
        required_labels={"gpu": "h100"},
    )  # fmt: skip
    agents = [KubeAgent(kube, CONFIG, KubeAgentOptions(holder=name)) for name in ("first", "second")]
    for agent in agents:
        agent.watch.start()
    try:
        agents[0].tick()
        agents[1].tick()  # the lease is the first's: the second does nothing
        assert (agents[0].leading, agents[1].leading) == (True, False)
        assert [d["metadata"]["name"] for d in cluster.deployments()] == ["worker-big"]

        def pending_rows() -> bool:
            agents[0].tick()
            rows = Instance.objects.filter(deployment=row)
            return rows.count() == 2 and all(i.state == InstanceState.PENDING for i in rows)

        assert wait_for(pending_rows, timeout=10, interval=0.2)
        assert Node.objects.get(name=f"kubernetes/{NAMESPACE}").is_online
        assert "2 replica(s) pending: Unschedulable" in Deployment.objects.get(pk=row.pk).pending_reason
        deployments.scale(row, 1)

        def one_row() -> bool:
            agents[0].tick()
            return Instance.objects.filter(deployment=row).count() == 1

        assert wait_for(one_row, timeout=10, interval=0.2)

        leases.release_kube_lease(holder="first")
        agents[1].tick()
        assert agents[1].leading
        Deployment.objects.filter(pk=row.pk).update(runs_on="agents")  # moved off the cluster
        agents[1].tick()
        assert cluster.deployments() == []
    finally:
        for agent in agents:
            agent.watch.stopping.set()


CRASH_LOOP: dict[str, Any] = {
    "metadata": {"name": "worker-x-1", "annotations": {"fleet.modelportal.io/deployment-name": "x"},
                 "labels": {"fleet.modelportal.io/generation": "4"}},
    "status": {"containerStatuses": [{
        "name": "worker", "ready": False, "restartCount": 3,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "Trace\nCommandError: no"}},
    }]},
}  # fmt: skip


def test_pods_become_the_replica_states_the_admin_shows():
    replica = pod_replica(CRASH_LOOP)
    assert replica is not None
    assert (replica.deployment, replica.generation, replica.state, replica.restarts) == ("x", 4, "failed", 3)
    assert replica.detail.startswith("CrashLoopBackOff: exited with code 1 (Error): CommandError: no")
    once = copy.deepcopy(CRASH_LOOP)
    once["status"]["containerStatuses"][0]["restartCount"] = 1
    assert pod_replica(once).state == "crashed"  # type: ignore[union-attr]
    ready = copy.deepcopy(CRASH_LOOP)
    ready["status"]["containerStatuses"][0] |= {"ready": True, "state": {"running": {"startedAt": None}}}
    assert pod_replica(ready).state == "ready"  # type: ignore[union-attr]
    ready["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert (pod_replica(ready).state, pod_replica(ready).wanted) == ("stopping", False)  # type: ignore[union-attr]
    assert pod_replica({"metadata": {"name": "not-ours"}}) is None


@pytest.mark.django_db
def test_the_scheduler_places_no_replica_of_a_kubernetes_deployment_and_stops_the_agents_ones():
    node = Node.objects.create(
        name="node-a", address="127.0.0.1", memory_bytes=16 * 2**30,
        expires_at=timezone.now() + timedelta(seconds=30),
    )  # fmt: skip
    cluster_node = Node.objects.create(
        name=f"kubernetes/{NAMESPACE}", address="", expires_at=timezone.now() + timedelta(seconds=30)
    )
    row = deployments.create_deployment(name="echo", model_path="canned", backend="canned", replicas=2)
    reconcile()
    assert Instance.objects.filter(deployment=row, node=node, wanted=True).count() == 2
    Deployment.objects.filter(pk=row.pk).update(runs_on="kubernetes")
    pod = Instance.objects.create(deployment=row, node=cluster_node, generation=1, pod="worker-echo-1")
    reconcile()
    assert not Instance.objects.filter(deployment=row, node=node, wanted=True).exists()  # agents drain theirs
    assert Instance.objects.get(pk=pod.pk).wanted  # the pod's row is runkubeagent's
    assert Instance.objects.filter(deployment=row).count() == 3  # nothing placed on the cluster's node

    cold = deployments.create_deployment(
        name="cold",
        model_path="canned",
        backend="canned",
        runs_on="kubernetes",
        min_replicas=0,
        max_replicas=2,
    )
    Deployment.objects.filter(pk=cold.pk).update(replicas=0)
    reconcile()
    assert ServedModel.objects.filter(name="cold").exists()  # a request for it queues: a cold start
    assert not Instance.objects.filter(deployment=cold).exists()
