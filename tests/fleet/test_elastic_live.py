"""An elastic fleet with real processes: a portal, `manage.py runagent` and the canned workers it starts.

The canned engine (fixed words, a delay per token) stands in for a model where the model does not
matter: a deployment at 0 replicas serves its first request; a burst scales it up to its max; low load
brings it back down with no request lost on the way; and three models whose replicas fit two at a time
on the node serve requests that alternate between them, evicting the idle one each time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import pytest

from fleet.models import Deployment, DeploymentEvent, Instance, InstanceState, Node
from fleet.services import deployments
from registry.services.keys import create_api_key
from tests.fleet.agents import AgentProcess, kill_workers_of
from tests.portal_process import PortalProcess, start_portal
from tests.processes import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]


@pytest.fixture
def portal() -> Iterator[PortalProcess]:
    with start_portal(extra_env={"WORKER_CACHE_SECONDS": "0.2", "HEARTBEAT_INTERVAL": "1"}) as running:
        yield running


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentProcess]:
    running = AgentProcess("node-1", tmp_path / "logs")
    assert wait_for(lambda: Node.objects.filter(name="node-1").exists(), timeout=60), running.output()
    yield running
    running.stop()
    for deployment in Deployment.objects.values_list("name", flat=True):
        kill_workers_of(deployment)


def chat(portal: PortalProcess, secret: str, model: str, tokens: int = 5) -> httpx2.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens}
    return httpx2.post(
        f"{portal.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {secret}"},
        timeout=120,
    )


def ready(name: str) -> int:
    return Instance.objects.filter(deployment__name=name, wanted=True, state=InstanceState.READY).count()


def instances(name: str) -> int:
    return Instance.objects.filter(deployment__name=name).count()


def actions(name: str) -> list[str]:
    return list(
        DeploymentEvent.objects.filter(deployment__name=name)
        .order_by("at", "id")
        .values_list("action", flat=True)
    )


def test_from_zero_to_max_under_a_burst_and_back_to_zero_losing_no_request(portal, agent):
    _, secret = create_api_key(name="elastic")
    deployments.create_deployment(
        name="elastic", model_path="canned", backend="canned", min_replicas=0, max_replicas=3,
        max_concurrency=2, scale_up_after=1, cooldown=4, idle_seconds=8, target_queue_wait=0.5,
        cold_start_timeout=90, extra_args="--canned-token-delay 0.05 --max-queue 0",
    )  # fmt: skip
    assert wait_for(lambda: ready("elastic") == 1, timeout=120, interval=0.5), agent.output()
    assert chat(portal, secret, "elastic").status_code == 200  # its served model exists from now on
    Deployment.objects.filter(name="elastic").update(replicas=0)  # as if idle: scaled to zero
    assert wait_for(lambda: instances("elastic") == 0, timeout=60, interval=0.5), agent.output()

    started = time.monotonic()
    first = chat(portal, secret, "elastic")
    assert first.status_code == 200, first.text  # a cold start, no 5xx
    cold_start = time.monotonic() - started
    assert "cold_start" in actions("elastic")

    # A burst: 12 clients, 2 s requests, 2 slots a replica. It scales to its max within a bound.
    stop, codes = threading.Event(), list[int]()

    def client() -> None:
        while not stop.is_set():
            codes.append(chat(portal, secret, "elastic", tokens=40).status_code)

    with ThreadPoolExecutor(12) as pool:
        for _ in range(12):
            pool.submit(client)
        try:
            assert wait_for(lambda: ready("elastic") == 3, timeout=90, interval=0.5), agent.output()
        finally:
            stop.set()
    assert codes
    assert set(codes) == {200}
    assert "up" in actions("elastic")

    # Low load: one request at a time while it scales down; none is lost; then idle, to zero.
    slow_codes = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and Deployment.objects.get(name="elastic").replicas > 1:
        slow_codes.append(chat(portal, secret, "elastic").status_code)
        time.sleep(0.3)
    assert set(slow_codes) == {200}
    assert "down" in actions("elastic")
    assert wait_for(lambda: instances("elastic") == 0, timeout=60, interval=0.5), actions("elastic")
    assert actions("elastic")[-1] == "zero"
    print(f"cold start of a canned worker through the portal: {cold_start:.1f} s")


def test_three_models_that_fit_two_at_a_time_serve_alternating_requests_by_eviction(portal, agent):
    _, secret = create_api_key(name="evict")
    node = Node.objects.get(name="node-1")
    share = int(node.memory_bytes * 0.42)  # two fit in the 90% a node lends, three do not
    for name in ("m1", "m2", "m3"):
        deployments.create_deployment(
            name=name, model_path="canned", backend="canned", min_replicas=0, max_replicas=1,
            memory_per_replica=share, cold_start_timeout=90,
        )  # fmt: skip
    assert wait_for(lambda: ready("m1") + ready("m2") + ready("m3") == 2, timeout=120, interval=0.5)
    codes = [chat(portal, secret, name).status_code for name in ("m1", "m2", "m3") * 2]
    assert codes == [200] * 6
    evictions = DeploymentEvent.objects.filter(action="evicted", replicas_after=0).count()
    assert evictions >= 2, list(DeploymentEvent.objects.values_list("deployment__name", "action", "reason"))
    assert sum(Instance.objects.filter(wanted=True).values_list("memory_bytes", flat=True)) <= 2 * share
