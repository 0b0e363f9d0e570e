"""`runkubeagent` against the in-memory cluster: real worker processes, a real portal, streamed chats.

The kubelet of `cluster.py` starts each pod's `manage.py runworker` on a
loopback address of its own; the canned engine (a test engine: fast to
start, fixed answers) stands in for a model, since what is tested is how
replicas come, roll, crash and go.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.models import Instance, InstanceState
from fleet.services import deployments
from registry.models import Worker
from registry.services.keys import create_api_key
from tests.fleet.kube.cluster import Cluster, kill_container
from tests.fleet.kube.conftest import MODEL_CACHE_CLAIM, NAMESPACE, WORKER_TOKEN, add_worker_secret
from tests.fleet.test_agent_live import chat, stream_until
from tests.portal_process import PortalProcess, start_portal
from tests.processes import REPO_ROOT, database_url, subprocess_env, wait_for

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


@pytest.fixture
def portal() -> Iterator[PortalProcess]:
    env = {"WORKER_CACHE_SECONDS": "0.2", "HEARTBEAT_INTERVAL": "1", "WORKER_TOKEN": WORKER_TOKEN}
    with start_portal(extra_env=env) as running:
        yield running


@pytest.fixture
def kube_agent(cluster: Cluster, tmp_path: Path) -> Iterator[Path]:
    """`manage.py runkubeagent` on the cluster, from a kubeconfig; yields its log."""
    add_worker_secret(cluster, database_url())
    config, log = cluster.kubeconfig(tmp_path / "kubeconfig"), tmp_path / "runkubeagent.log"
    command = [sys.executable, "manage.py", "runkubeagent", "--namespace", NAMESPACE]
    command += ["--kubeconfig", str(config), "--interval", "0.5"]
    with open(log, "wb") as out:
        agent = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
            env=subprocess_env({"HEARTBEAT_INTERVAL": "1", "KUBE_MODEL_CACHE_CLAIM": MODEL_CACHE_CLAIM}),
        )  # fmt: skip
    yield log
    agent.terminate()
    agent.wait(20)


def ready(name: str) -> list[Instance]:
    rows = Instance.objects.filter(deployment__name=name, state=InstanceState.READY, wanted=True)
    return list(rows.select_related("deployment", "node"))


def serving(name: str, count: int, generation: int = 1) -> bool:
    """`count` ready replicas of `generation`, each with its worker online, and nothing else."""
    rows, replicas = ready(name), Instance.objects.filter(deployment__name=name)
    online = Worker.objects.online().filter(identity__in=[i.identity for i in rows]).count()
    return len(rows) == replicas.count() == online == count and {i.generation for i in rows} == {generation}


def test_deployments_on_a_cluster_scale_roll_restart_and_show_a_crash_loop(portal, kube_agent, cluster):
    _, secret = create_api_key(name="kube")
    kind = {"model_path": "canned", "backend": "canned", "runs_on": "kubernetes"}
    broken = deployments.create_deployment(name="broken", role="prefill", replicas=1, **kind)
    echo = deployments.create_deployment(
        name="echo", replicas=1, extra_args="--canned-token-delay 0.02", **kind
    )
    assert wait_for(lambda: serving("echo", 1), timeout=60, interval=0.3), kube_agent.read_text()[-3000:]
    (first,) = ready("echo")
    assert first.node.name == f"kubernetes/{NAMESPACE}"
    assert (
        Worker.objects.get(identity=first.identity).address
        == f"http://{cluster.containers[first.pod].ip}:8100"
    )

    deployments.scale(echo, 2)
    assert wait_for(lambda: serving("echo", 2), timeout=60, interval=0.3)
    before = {i.pod for i in ready("echo")}

    # A rolling restart under a streaming load: four clients, every request answered in full.
    done, results = threading.Event(), list[str]()
    clients = [threading.Thread(target=stream_until, args=(portal, secret, done, results)) for _ in range(4)]
    for client in clients:
        client.start()
    deployments.restart(echo)
    rolled = wait_for(lambda: serving("echo", 2, generation=2), timeout=90, interval=0.3)
    done.set()
    for client in clients:
        client.join(60)
    assert rolled, kube_agent.read_text()[-3000:]
    assert [r for r in results if r != "ok"] == []
    assert len(results) >= 100
    after = {i.pod for i in ready("echo")}
    assert after.isdisjoint(before)
    assert {p["metadata"]["name"] for p in cluster.pods() if "echo" in p["metadata"]["name"]} == after

    # A worker killed outright: the kubelet restarts its container, the row counts the restart.
    victim = sorted(after)[0]
    kill_container(cluster, victim)
    assert wait_for(lambda: Instance.objects.get(pod=victim).restarts == 1, timeout=30, interval=0.2)
    assert wait_for(lambda: serving("echo", 2, generation=2), timeout=60, interval=0.3)

    deployments.scale(echo, 1)
    assert wait_for(lambda: serving("echo", 1, generation=2), timeout=60, interval=0.3)
    assert wait_for(lambda: len([p for p in cluster.pods() if "echo" in p["metadata"]["name"]]) == 1, 30)

    # The crash-looping deployment, meanwhile: failed, with why and its last log lines.
    (looping,) = Instance.objects.filter(deployment=broken)
    assert wait_for(
        lambda: Instance.objects.get(pk=looping.pk).state == InstanceState.FAILED, timeout=60, interval=0.3
    )
    looping.refresh_from_db()
    assert looping.restarts >= 3
    assert looping.detail.startswith("CrashLoopBackOff: exited with code 1 (Error)"), looping.detail
    assert "does not split prefill from decode" in looping.log_tail, looping.log_tail
    assert str(deployments.summarize(broken, [looping])) == "0/1 ready, 1 failed"


@pytest.mark.slow
def test_a_smollm2_deployment_on_the_cluster_answers_through_the_portal(portal, kube_agent, cluster):
    _, secret = create_api_key(name="smol")
    deployments.create_deployment(
        name="smol", model_path="smollm2-135m-instruct", backend="llamacpp", replicas=1, runs_on="kubernetes"
    )
    assert wait_for(lambda: serving("smol", 1), timeout=180, interval=0.5), kube_agent.read_text()[-3000:]
    assert "Paris" in chat(portal, secret, "smol")
