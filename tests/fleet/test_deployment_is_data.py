"""A deployment is data, never code: every trick that once ran a module of the author's choosing is refused.

Django's command runner imports `--settings` and `--pythonpath` from anywhere on
a command line, and argparse would expand abbreviations; a deployment's fields
and extra options reach `runworker`'s argv. These tests try each trick through
the admin form and `manage.py deploy create`, show that the agent never starts
an argv with an option outside the allow-list (even from a row written straight
to the database), and run the real `runworker` with hostile values.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, CommandParser
from django.utils.html import escape
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.agent.agent import Agent, AgentOptions, backoff
from fleet.agent.processes import WorkerProcess, command_line, is_worker, start_time
from fleet.models import Deployment, Instance, InstanceState
from fleet.options import ALLOWED_FLAGS, OptionError, check_worker_argv, parse_extra_options
from fleet.services.deployments import worker_command, worker_prefix
from inference import loading
from portal.env import worker_environment
from tests.fleet.conftest import ADD, FORM
from tests.processes import REPO_ROOT, subprocess_env, wait_for

# The form's defaults, for a SmolLM2 deployment named "trick".
TRICK = {
    **FORM,
    "name": "trick",
    "model_path": "smollm2-135m-instruct",
    "backend": "auto",
    "replicas": "1",
    "extra_args": "",
}
# (form field, value, the message shown on that field)
TRICKS = [
    (
        "extra_args",
        "--pythonpath /tmp/x --settings evil",
        "'--pythonpath' is not an option a deployment may set",
    ),
    ("extra_args", "--settings=evil", "'--settings' is not an option a deployment may set"),
    ("extra_args", "--hos 0.0.0.0", "'--hos' is not an option a deployment may set"),
    ("extra_args", "--worker-addr http://203.0.113.9:1 --no-reg", "'--worker-addr' is not an option"),
    ("extra_args", "--worker-token chosen", "'--worker-token' is not an option a deployment may set"),
    ("extra_args", "--host=0.0.0.0", "--host is set by the deployment's own fields or by the agent"),
    ("extra_args", "--traceback", "'--traceback' is not an option a deployment may set"),
    ("extra_args", "evil", "'evil' is not an option a deployment may set"),
    ("extra_args", "--seed x", "argument --seed: invalid int value: 'x'"),
    ("model_path", "--pythonpath=/tmp/x", "'--pythonpath=/tmp/x' is neither a packaged model"),
    ("model_path", "/etc/passwd", "nor in a node's catalogue"),
    ("model_path", "evil-org/model", "nor a hub id of an organisation in FLEET_HUB_ORGS"),
    ("dtype", "--settings=evil", "Select a valid choice"),
    ("model_names", "a,--settings=evil", "is not a served name"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("field", "value", "message"), TRICKS)
def test_the_admin_form_refuses_each_trick_on_its_field(staff, node, field, value, message):
    response = staff.post(ADD, {**TRICK, field: value})
    assert response.status_code == 200
    page = response.content.decode()
    assert escape(message) in page
    assert f'id="id_{field}_error"' in page or f"field-{field} errors" in page or "errorlist" in page
    assert not Deployment.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(("field", "value", "message"), TRICKS)
def test_deploy_create_refuses_each_trick(node, field, value, message):
    flag = "--" + field.replace("_", "-")
    with pytest.raises(CommandError, match=r"\w"):
        call_command("deploy", "create", "trick", "--model-path=smollm2-135m-instruct", f"{flag}={value}")
    assert not Deployment.objects.exists()


@pytest.mark.django_db
def test_catalogued_packaged_and_allowed_hub_models_are_accepted(staff, node, settings):
    for name, path in (("a", "/models/qwen.gguf"), ("b", "all-minilm-l6-v2")):
        response = staff.post(ADD, {**TRICK, "name": name, "model_path": path, "extra_args": "--max-queue 8"})
        assert response.status_code == 302, response.content.decode()[-2000:]
    settings.FLEET_HUB_ORGS = ["HuggingFaceTB"]
    call_command("deploy", "create", "c", "--model-path=HuggingFaceTB/SmolLM2-360M-Instruct")
    assert Deployment.objects.get(name="a").extra_args == "--max-queue 8"
    assert Deployment.objects.count() == 3


@pytest.mark.django_db
def test_the_agent_never_starts_an_argv_outside_the_allow_list(node, tmp_path):
    """Rows written straight to the database, past every form check, are refused by the agent itself."""
    hostile = [
        {"extra_args": "--settings evil"},
        {"extra_args": "--pythonpath=/tmp/x"},
        {"extra_args": "--hos 0.0.0.0"},
        {"model_path": "/tmp/x/not-catalogued.gguf"},
        {"model_path": "evil-org/model"},
    ]
    for number, fields in enumerate(hostile):
        deployment = Deployment.objects.create(
            **{"name": f"d{number}", "model_path": "smollm2-135m-instruct", **fields}
        )
        Instance.objects.create(deployment=deployment, node=node, generation=1)
    agent = Agent(AgentOptions(name="node-a", log_dir=tmp_path))
    agent.node = node
    with mock.patch.object(WorkerProcess, "start") as start:
        for instance in agent.mine():
            agent.start(instance)
    start.assert_not_called()
    refused = Instance.objects.filter(state=InstanceState.FAILED)
    assert refused.count() == len(hostile)
    assert all(i.detail.startswith("Refused: ") for i in refused)


@pytest.mark.django_db
def test_every_argv_the_agent_builds_is_flag_equals_value_from_the_allow_list(node):
    deployment = Deployment.objects.create(
        name="ok",
        model_path="/models/qwen.gguf",
        threads=2,
        extra_args="--max-queue 8 --no-enable-prefix-caching --kv-transfer-config '{\"a\": 1}'",
    )
    instance = Instance.objects.create(deployment=deployment, node=node, generation=1)
    argv = worker_command(instance, port=1234, host="127.0.0.1", address="http://10.0.0.2:1234")
    check_worker_argv(argv, prefix=worker_prefix())
    options = argv[len(worker_prefix()) :]
    assert "--model-path=/models/qwen.gguf" in options
    assert '--kv-transfer-config={"a": 1}' in options
    assert all(o.startswith("--") and (o.split("=")[0] in ALLOWED_FLAGS or "=" not in o) for o in options)


def django_preparse(argv: list[str]) -> tuple[str | None, str | None]:
    """What Django's ManagementUtility takes as --settings and --pythonpath from a command line."""
    parser = CommandParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--settings")
    parser.add_argument("--pythonpath")
    parser.add_argument("args", nargs="*")
    options, _ = parser.parse_known_args(argv)
    return options.settings, options.pythonpath


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["--settings", "--pythonpath", "--seed", "--max-queue", "=", "evil", " ", "-"]))
)
def test_no_accepted_extra_options_reach_django_as_settings_or_pythonpath(parts):
    try:
        options = parse_extra_options("".join(parts))
    except OptionError:
        return
    check_worker_argv(
        ["python", "manage.py", "runworker", *options], prefix=["python", "manage.py", "runworker"]
    )
    assert django_preparse(options) == (None, None)


@pytest.mark.processes
def test_runworker_with_hostile_values_imports_nothing_of_theirs(tmp_path):
    """The argv shape the agent builds, with a model path and dtype that name an evil settings module."""
    (tmp_path / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    argv = [
        sys.executable, "manage.py", "runworker", f"--model-path=--pythonpath={tmp_path}",
        "--dtype=--settings=evil", "--port=0", "--backend=transformers",
    ]  # fmt: skip
    done = subprocess.run(
        argv, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert not (tmp_path / "ran").exists(), done.stdout + done.stderr


@pytest.mark.processes
def test_runworker_takes_no_abbreviations():
    argv = [sys.executable, "manage.py", "runworker", "--model-path=x", "--hos=0.0.0.0"]
    done = subprocess.run(
        argv, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "unrecognized arguments: --hos=0.0.0.0" in done.stderr


def test_a_worker_gets_only_what_it_needs_and_a_key_of_its_own(monkeypatch):
    monkeypatch.setenv("AGENT_ONLY_SECRET", "x")
    monkeypatch.setenv("WORKER_TOKEN", "shared")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    environment = worker_environment("fresh")
    assert "AGENT_ONLY_SECRET" not in environment
    assert environment["SECRET_KEY"] == "fresh"
    assert environment["WORKER_TOKEN"] == "shared"
    assert environment["CUDA_VISIBLE_DEVICES"] == "0"
    assert environment["ENV_FILE"] == "/dev/null"
    assert environment["DATABASE_URL"]


@pytest.mark.processes
def test_adoption_needs_the_exact_argv_and_the_same_start_time():
    argv = [sys.executable, "-c", "import time; time.sleep(30)", "a/1@vm"]
    process = subprocess.Popen(argv)
    try:
        # Until it has exec'd, the child's command line is still its parent's (an agent adopts much later).
        assert wait_for(lambda: command_line(process.pid) == argv, timeout=10, interval=0.05)
        started = start_time(process.pid)
        assert is_worker(process.pid, argv, started)
        assert not is_worker(process.pid, [*argv[:-1], "a/1@v"], started)  # a prefix of its id is not it
        assert not is_worker(process.pid, [*argv[:-1], "a/1@vm2"], started)
        assert not is_worker(process.pid, argv, (started or 0) + 1)  # a reused pid starts later
        assert WorkerProcess.adopt(process.pid, argv, started) is not None
        assert WorkerProcess.adopt(process.pid, argv, None) is None
    finally:
        process.kill()
        process.wait(10)
    assert not is_worker(process.pid, argv, started)


def test_a_hub_download_takes_no_code_or_pickles(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "_hub_offline", lambda: False)
    with mock.patch("huggingface_hub.snapshot_download", return_value=str(tmp_path)) as download:
        assert loading._download_from_hub("org/model", cache_dir=tmp_path) == Path(tmp_path)
    patterns = download.call_args.kwargs["allow_patterns"]
    assert "*.safetensors" in patterns
    assert "*.json" in patterns
    assert not any(p.endswith((".py", ".bin", ".pt", ".pkl", "*")) for p in patterns)


def test_a_crashed_worker_waits_the_restart_backoff_doubled_per_crash_up_to_a_minute():
    assert [backoff(n) for n in (1, 2, 3, 4, 7, 20)] == [1, 2, 4, 8, 60, 60]
    assert [backoff(n, first=0.1) for n in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.4])
