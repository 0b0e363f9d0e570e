"""A real agent on loopback turns deployments into serving workers, and keeps them so.

Real processes: `manage.py runagent`, the `runworker` processes it starts, and a
portal that clients call. The packaged SmolLM2 (llama.cpp) shows a deployment
serving a chat and a killed worker coming back; the canned engine (a test
engine: fast to start, fixed answers) carries the scaling, the rolling restart
under a streaming load and the agent's own restart, where the engine is not
what is tested.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from fleet.models import Deployment, Instance, InstanceState, Node
from fleet.services import deployments, scheduler
from registry.models import Worker
from registry.services.keys import create_api_key
from tests.fleet.agents import AgentProcess, environment_of, kill_workers_of, workers_of
from tests.portal_process import PortalProcess, start_portal
from tests.processes import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]


@pytest.fixture
def portal() -> Iterator[PortalProcess]:
    with start_portal(extra_env={"WORKER_CACHE_SECONDS": "0.2", "HEARTBEAT_INTERVAL": "1"}) as running:
        yield running


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    """The node's agent (a broken model folder in its catalogue); a test that restarts it appends one."""
    broken = tmp_path / "models" / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    (broken / "model.safetensors").write_bytes(b"not weights")
    agents = [AgentProcess("node-1", tmp_path / "logs", model_dirs=[tmp_path / "models"])]
    yield agents
    for running in agents:
        running.stop()
    for deployment in Deployment.objects.values_list("name", flat=True):
        kill_workers_of(deployment)


def test_a_worker_that_keeps_crashing_fails_with_its_last_log_lines(agent, tmp_path):
    broken = str(tmp_path / "models" / "broken")

    def catalogued() -> bool:
        return any(e["path"] == broken for node in Node.objects.filter(name="node-1") for e in node.catalogue)

    assert wait_for(catalogued, timeout=60), agent[0].output()
    deployment = deployments.create_deployment(
        name="broken", model_path=broken, backend="transformers", replicas=1
    )
    scheduler.reconcile()
    assert wait_for(
        lambda: Instance.objects.filter(deployment=deployment, state=InstanceState.FAILED).exists(),
        timeout=120,
        interval=0.5,
    ), agent[0].output()
    failed = Instance.objects.get(deployment=deployment)
    assert failed.restarts == 4
    assert "gave up after 5 crashes in a row" in failed.detail
    assert "CommandError" in failed.log_tail or "Error" in failed.log_tail, failed.log_tail
    time.sleep(2)  # no sixth start
    assert Instance.objects.get(pk=failed.pk).restarts == 4
    assert workers_of("broken") == []


def pids(instances: list[Instance]) -> set[int]:
    return {int(i.pid or 0) for i in instances}


def ready(name: str) -> list[Instance]:
    return list(Instance.objects.filter(deployment__name=name, wanted=True, state=InstanceState.READY))


def wait_ready(name: str, count: int, agent: AgentProcess, timeout: float) -> list[Instance]:
    if not wait_for(lambda: len(ready(name)) == count, timeout=timeout, interval=0.5):
        rows = list(Instance.objects.filter(deployment__name=name).values("state", "detail", "log_tail"))
        raise AssertionError(f"{name}: not {count} ready: {rows}\n{agent.output()}")
    return ready(name)


def chat(portal: PortalProcess, secret: str, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    response = httpx2.post(
        f"{portal.url}/v1/chat/completions",
        json={**body, "temperature": 0, "max_tokens": 20},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_a_deployment_serves_a_chat_comes_back_from_kill_9_and_stops_at_scale_0(portal, agent):
    _, secret = create_api_key(name="deploy")
    deployment = deployments.create_deployment(
        name="smol", model_path="smollm2-135m-instruct", backend="llamacpp", replicas=1
    )
    scheduler.reconcile()
    (first,) = wait_ready("smol", 1, agent[0], timeout=240)
    assert "Paris" in chat(portal, secret, "smol")
    environment = environment_of(first.pid or 0)
    assert "AGENT_ONLY_SECRET" not in environment  # the agent's other secrets stay with it
    assert environment["SECRET_KEY"] != os.environ["SECRET_KEY"]  # a key of its own
    assert environment["ENV_FILE"] == os.devnull
    assert environment["DATABASE_URL"]

    assert first.pid
    os.kill(first.pid, signal.SIGKILL)
    assert wait_for(lambda: Instance.objects.get(pk=first.pk).restarts == 1, timeout=30, interval=0.5)
    started = time.monotonic()
    (again,) = wait_ready("smol", 1, agent[0], timeout=120)
    assert again.pk == first.pk
    assert again.pid != first.pid
    assert f"{first.identity} killed by SIGKILL (1 in a row)" in agent[0].output()
    assert "Paris" in chat(portal, secret, "smol")
    print(f"back within {time.monotonic() - started:.1f} s of the restart")

    deployments.scale(deployment, 0)
    assert wait_for(lambda: not Instance.objects.filter(deployment=deployment).exists(), timeout=60)
    assert workers_of("smol") == []
    assert not Worker.objects.filter(identity__startswith="smol/").exists()


def stream_until(portal: PortalProcess, secret: str, done: threading.Event, results: list[str]) -> None:
    """Streamed chats one after another until `done` (25 at least); each result is "ok" or why not."""
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}
    headers = {"Authorization": f"Bearer {secret}"}
    count = 0
    while not done.is_set() or count < 25:
        count += 1
        try:
            with httpx2.stream(
                "POST", f"{portal.url}/v1/chat/completions", json=body, headers=headers, timeout=30
            ) as response:
                lines = [line for line in response.iter_lines() if line]
            ok = response.status_code == 200 and lines[-1] == "data: [DONE]"
            results.append("ok" if ok else f"{response.status_code} {lines[-3:]}")
        except httpx2.HTTPError as exc:
            results.append(f"{type(exc).__name__}: {exc}")


def test_scale_roll_under_load_and_adopt_after_the_agent_is_killed(portal, agent, tmp_path):
    _, secret = create_api_key(name="roll")
    deployment = deployments.create_deployment(
        name="echo", model_path="canned", backend="canned", replicas=1, extra_args="--canned-token-delay 0.02"
    )
    scheduler.reconcile()
    wait_ready("echo", 1, agent[0], timeout=60)
    deployments.scale(deployment, 2)
    before = pids(wait_ready("echo", 2, agent[0], timeout=60))
    assert len(before) == 2
    assert sorted(workers_of("echo")) == sorted(before)

    # A rolling restart under a streaming load: four clients, at least 100 requests in all.
    done, results = threading.Event(), list[str]()
    clients = [threading.Thread(target=stream_until, args=(portal, secret, done, results)) for _ in range(4)]
    for client in clients:
        client.start()
    deployments.restart(deployment)
    rolled = wait_for(
        lambda: {i.generation for i in ready("echo")} == {2} and len(ready("echo")) == 2
        and Instance.objects.filter(deployment=deployment).count() == 2,
        timeout=120,
        interval=0.5,
    )  # fmt: skip
    done.set()
    for client in clients:
        client.join(60)
    assert rolled, agent[0].output()
    failures = [r for r in results if r != "ok"]
    assert len(results) >= 100
    assert failures == []
    after = pids(ready("echo"))
    assert after.isdisjoint(before)
    assert wait_for(lambda: sorted(workers_of("echo")) == sorted(after), timeout=30)

    # kill -9 of the agent leaves its workers serving; the next agent adopts them.
    agent[0].kill()
    agent.append(AgentProcess("node-1", tmp_path / "logs", model_dirs=[tmp_path / "models"]))
    assert wait_for(lambda: "Adopted" in agent[1].output(), timeout=30), agent[1].output()
    time.sleep(3)  # a few ticks: nothing new may start
    assert pids(ready("echo")) == after
    assert sorted(workers_of("echo")) == sorted(after)
    assert Instance.objects.filter(deployment=deployment).count() == 2

    deployments.scale(deployment, 0)
    assert wait_for(lambda: not Instance.objects.filter(deployment=deployment).exists(), timeout=60)
    assert wait_for(lambda: workers_of("echo") == [], timeout=10)
