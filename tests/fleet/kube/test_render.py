"""The Kubernetes renderer: a pure function checked against the Kubernetes schemas, and what export prints."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import kubernetes_validate
import pytest
import yaml
from django.core.management import call_command

from fleet.kube.render import (
    COMMON_LABELS,
    DEPLOYMENT_LABEL,
    GENERATION_LABEL,
    ClusterConfig,
    label_value,
    object_name,
    render_deployment,
    worker_id,
)
from fleet.kube.spec import cluster_config, desired_object
from fleet.models import Deployment, Instance, Node
from fleet.options import OptionError
from inference.management.commands.runworker import Command as RunWorker
from tests.deploy.test_k8s_manifests import KUBERNETES_VERSIONS, by_name, of_kind

CONFIG = ClusterConfig(namespace="models", image="registry.example/modelportal:1", drain_timeout=45)
SECRET_NAMES = {"DATABASE_URL", "WORKER_TOKEN", "SECRET_KEY", "REDIS_URL"}


def deployment(**fields: Any) -> Deployment:
    values = {"name": "smol", "model_path": "smollm2-135m-instruct", "backend": "llamacpp", "generation": 3}
    return Deployment(**(values | fields))


def render(row: Deployment, replicas: int | None = 2) -> dict[str, Any]:
    return render_deployment(row, CONFIG, memory_bytes=3 * 2**30, replicas=replicas)


def container_of(doc: dict[str, Any]) -> dict[str, Any]:
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    return container


ROWS = {
    "plain": deployment(),
    "gpu, labels, pack": deployment(
        name="big_model.v2",
        backend="vllm",
        placement="pack",
        required_labels={"gpu": "h100"},
        extra_args="--tensor-parallel-size 2 --drain-timeout 90",
        role="prefill",
    ),
    "long name": deployment(name="a" * 99 + "-", max_model_len=2048, threads=4),
}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_the_rendered_deployment_follows_the_kubernetes_schema(row, version):
    kubernetes_validate.validate(render(row), version, strict=True)
    kubernetes_validate.validate(render(row, replicas=None), version, strict=True)


def test_names_and_label_values_are_valid_kubernetes_names_whatever_the_row_name():
    for row in ROWS.values():
        doc = render(row)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,45}[a-z0-9])?", doc["metadata"]["name"])
        for value in doc["metadata"]["labels"].values():
            assert re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?", value)
    assert object_name(ROWS["gpu, labels, pack"]) == "worker-big-model-v2-prefill"
    assert label_value("a" * 99 + "-") != label_value("a" * 99 + ".")  # cut names stay apart


def test_selector_is_stable_across_generations_and_matches_the_pods():
    first, second = render(deployment(generation=1)), render(deployment(generation=2))
    assert first["spec"]["selector"] == second["spec"]["selector"]
    labels = second["spec"]["template"]["metadata"]["labels"]
    assert second["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert labels[GENERATION_LABEL] == "2"  # a new generation changes the template: a rollout
    assert labels[DEPLOYMENT_LABEL] == "smol"
    assert COMMON_LABELS.items() <= first["metadata"]["labels"].items()


def test_replicas_are_left_to_the_scale_subresource_when_asked():
    assert render(deployment(), replicas=4)["spec"]["replicas"] == 4
    assert "replicas" not in render(deployment(), replicas=None)["spec"]


def test_pods_run_runworker_with_options_it_accepts_and_their_own_address():
    container = container_of(render(ROWS["long name"]))
    assert container["command"] == ["python", "manage.py", "runworker"]
    options = RunWorker().create_parser("manage.py", "runworker").parse_args(container["args"])
    assert (options.host, options.port, options.threads, options.max_model_len) == ("0.0.0.0", 8100, 4, 2048)
    assert options.worker_address == "http://$(POD_IP):8100"
    assert options.worker_id == worker_id(ROWS["long name"], "models", "$(POD_NAME)")
    defined = {variable["name"] for variable in container["env"]}
    assert set(re.findall(r"\$\((\w+)\)", " ".join(container["args"]))) <= defined
    assert container["ports"] == [{"name": "http", "containerPort": 8100}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}


def test_secrets_come_by_reference_and_the_pod_gets_only_what_a_worker_reads():
    container = container_of(render(deployment()))
    env = {variable["name"]: variable for variable in container["env"]}
    for name in SECRET_NAMES:
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == CONFIG.secret
    assert set(env) == SECRET_NAMES | {
        "POD_NAME", "POD_IP", "HEARTBEAT_INTERVAL", "WORKER_DRAIN_TIMEOUT", "MODEL_CACHE_DIR", "ENV_FILE",
    }  # fmt: skip
    assert "envFrom" not in container
    assert render(deployment())["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_drain_rolling_update_and_placement_become_the_pod_spec():
    plain, gpu = render(ROWS["plain"]), render(ROWS["gpu, labels, pack"])
    assert plain["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert plain["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > CONFIG.drain_timeout
    assert gpu["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 90  # its own --drain-timeout
    env = {v["name"]: v.get("value") for v in container_of(gpu)["env"]}
    assert env["WORKER_DRAIN_TIMEOUT"] == "90"
    assert "preStop" in container_of(plain)["lifecycle"]
    assert plain["spec"]["template"]["spec"]["topologySpreadConstraints"][0]["maxSkew"] == 1
    assert "topologySpreadConstraints" not in gpu["spec"]["template"]["spec"]  # pack
    assert gpu["spec"]["template"]["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert container_of(gpu)["resources"] == {
        "requests": {"memory": "3072Mi", "nvidia.com/gpu": "2"},
        "limits": {"nvidia.com/gpu": "2"},
    }
    assert container_of(plain)["resources"] == {"requests": {"memory": "3072Mi"}}
    assert plain["spec"]["template"]["spec"]["volumes"] == [{"name": "model-cache", "emptyDir": {}}]
    claimed = render_deployment(
        ROWS["plain"], replace(CONFIG, model_cache_claim="models"), memory_bytes=2**30, replicas=1
    )
    (volume,) = claimed["spec"]["template"]["spec"]["volumes"]
    assert volume == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "models"}}
    kubernetes_validate.validate(claimed, KUBERNETES_VERSIONS[0], strict=True)


def test_an_option_outside_the_allow_list_is_refused():
    with pytest.raises(OptionError):
        render(deployment(extra_args="--settings evil"))


@pytest.mark.django_db
def test_export_prints_what_the_agent_applies(capsys):
    call_command(
        "deploy", "create", "echo", "--model-path", "canned", "--backend", "canned", "--replicas", "3",
        "--runs-on", "kubernetes",
    )  # fmt: skip
    capsys.readouterr()
    call_command("deploy", "export", "--k8s", "echo", "--namespace", "team-a")
    printed = yaml.safe_load(capsys.readouterr().out)
    row = Deployment.objects.get(name="echo")
    assert printed == desired_object(row, cluster_config(namespace="team-a"), replicas=3)
    assert printed["metadata"]["namespace"] == "team-a"
    assert printed["spec"]["replicas"] == 3
    kubernetes_validate.validate(printed, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.django_db
def test_a_pod_replica_is_known_by_its_pod_in_its_worker_id():
    row = Deployment.objects.create(name="smol", model_path="x", runs_on="kubernetes")
    node = Node.objects.create(name="kubernetes/models", address="")
    instance = Instance.objects.create(deployment=row, node=node, generation=1, pod="worker-smol-abc")
    assert instance.identity == worker_id(row, "models", "worker-smol-abc")
    assert instance.identity == "smol/worker-smol-abc@kubernetes/models"


def test_the_worker_secret_template_holds_what_the_pods_reference():
    secret = by_name("Secret", cluster_config().secret)
    container = container_of(render(deployment()))
    referenced = {
        v["valueFrom"]["secretKeyRef"]["key"]
        for v in container["env"]
        if "secretKeyRef" in v.get("valueFrom", {})
    }
    assert referenced == set(secret["stringData"]) == SECRET_NAMES


def test_the_agents_role_allows_its_calls_in_its_namespace_only():
    rules = {
        (group, resource): set(rule["verbs"])
        for rule in by_name("Role", "runkubeagent")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert rules == {
        ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "update", "delete"},
        ("apps", "deployments/scale"): {"get", "patch", "update"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "events"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
    }
    assert not of_kind("ClusterRole")
    assert not of_kind("ClusterRoleBinding")
    binding = by_name("RoleBinding", "runkubeagent")
    assert binding["roleRef"]["kind"] == "Role"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "runkubeagent"}]
    agent = by_name("Deployment", "runkubeagent")["spec"]["template"]["spec"]
    assert agent["serviceAccountName"] == "runkubeagent"
    assert agent["containers"][0]["command"] == ["python", "manage.py", "runkubeagent"]
