"""The agent's native llama.cpp build: started once in the background, then a rolling restart of llama.cpp.

A stand-in command plays the build (the real one compiles for minutes; see
`manage.py build_llamacpp`): it writes the folder's build.json, or fails. A
stand-in build that crashes is loaded by a real worker under a real agent.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from fleet.agent.native import NativeBuild, restart_llamacpp_deployments
from fleet.models import Deployment, Instance, InstanceState, Node
from fleet.services import deployments
from fleet.services.scheduler import reconcile
from inference.engines import llamacpp_build
from registry.models import Worker
from tests.fleet.agents import AgentProcess, kill_workers_of
from tests.processes import wait_for

pytest.importorskip("xllamacpp")


def stand_in(root: Path, succeed: bool, faster: bool = True, forced: bool = False) -> NativeBuild:
    """A build that writes its folder's build.json (its trial found it `faster` than the wheel, or not)."""
    folder = llamacpp_build.current_dir(root)
    assert folder is not None, "this machine has no native build folder (x86-64 Linux with xllamacpp)"
    info = json.dumps({"adopted": faster})
    code = (
        f"import pathlib; f = pathlib.Path({str(folder)!r}); f.mkdir(parents=True); "
        f"(f / 'build.json').write_text({info!r})"
        if succeed
        else "raise SystemExit(3)"
    )
    return NativeBuild(root, root / "build.log", command=[sys.executable, "-c", code], forced=forced)


def test_a_build_is_started_once_and_reported_ready_once(tmp_path: Path) -> None:
    build = stand_in(tmp_path, succeed=True)
    build.begin()
    assert build.process is not None
    assert build.process.wait(30) == 0
    assert build.poll() is True
    assert build.poll() is False  # reported once
    again = stand_in(tmp_path, succeed=True)
    again.begin()  # the build is there: nothing is started
    assert again.process is None
    assert not again.pending


@pytest.mark.parametrize("forced", [False, True])
def test_a_build_its_trial_found_slower_is_kept_unused_unless_forced(tmp_path: Path, forced: bool) -> None:
    build = stand_in(tmp_path, succeed=True, faster=False, forced=forced)
    build.begin()
    assert build.process is not None
    assert build.process.wait(30) == 0
    assert build.poll() is forced  # no rolling restart onto a slower build
    assert not build.pending
    folder = llamacpp_build.current_dir(tmp_path)
    assert folder is not None
    assert llamacpp_build.is_ready(folder)
    assert llamacpp_build.is_adopted(folder, forced) is forced


def test_a_failed_build_is_given_up_and_the_portable_wheel_keeps_serving(tmp_path: Path) -> None:
    build = stand_in(tmp_path, succeed=False)
    build.begin()
    assert build.process is not None
    assert build.process.wait(30) == 3
    assert build.poll() is False
    assert not build.pending


@pytest.mark.django_db
def test_only_the_deployments_running_llama_cpp_here_roll() -> None:
    Node.objects.create(
        name="a", address="127.0.0.1", memory_bytes=2**34, expires_at=timezone.now() + timedelta(seconds=30)
    )
    rows: dict[str, Deployment] = {}
    for name, backend in (("llama", "llamacpp"), ("auto", "auto"), ("other", "transformers")):
        rows[name] = deployments.create_deployment(
            name=name, model_path="canned", backend="canned", replicas=1, memory_per_replica=2**20
        )
        reconcile()
        (instance,) = rows[name].instances.all()
        Worker.objects.create(identity=instance.identity, address="http://127.0.0.1:1", backend=backend)
    Worker.objects.filter(identity__startswith="auto/").update(backend="llamacpp")  # auto chose llama.cpp
    instances = [i for d in rows.values() for i in d.instances.select_related("deployment", "node")]
    rolled = restart_llamacpp_deployments(instances)
    assert sorted(d.name for d in rolled) == ["auto", "llama"]
    generations = {d.name: d.generation for d in Deployment.objects.all()}
    assert generations == {"llama": 2, "auto": 2, "other": 1}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.django_db(transaction=True)
def test_a_build_that_crashes_a_worker_is_set_aside_and_the_worker_comes_back_on_the_wheel(
    tmp_path: Path,
) -> None:
    """A ready, adopted build whose xllamacpp dies of SIGSEGV on import: one crash, then the wheel."""
    root = tmp_path / "llamacpp"
    folder = llamacpp_build.current_dir(root)
    assert folder is not None
    (folder / "site" / "xllamacpp").mkdir(parents=True)
    crash = "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"
    (folder / "site" / "xllamacpp" / "__init__.py").write_text(crash)
    (folder / "build.json").write_text(json.dumps({"adopted": True}))
    env = {"LLAMACPP_NATIVE": "auto", "LLAMACPP_BUILD_DIR": str(root)}
    agent = AgentProcess("node-native", tmp_path / "logs", env=env)
    try:
        deployments.create_deployment(
            name="smol-native", model_path="smollm2-135m-instruct", backend="llamacpp", replicas=1
        )
        reconcile()

        def ready() -> Instance | None:
            return Instance.objects.filter(deployment__name="smol-native", state=InstanceState.READY).first()

        assert wait_for(lambda: ready() is not None, timeout=240, interval=0.5), agent.output()
        instance = ready()
        assert instance is not None
        assert instance.restarts == 1  # one crash on the build, then the wheel
        assert "killed by SIGSEGV on the native llama.cpp build: set aside" in agent.output()
        assert not llamacpp_build.is_ready(folder)
        assert "killed by SIGSEGV" in json.loads((folder / "failed.json").read_text())["error"]
        worker = Worker.objects.get(identity=instance.identity)
        assert worker.build.startswith("llama.cpp portable"), worker.build
    finally:
        agent.stop()
        kill_workers_of("smol-native")
