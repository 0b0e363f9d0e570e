"""deploy/k8s against the Kubernetes OpenAPI schemas, and against the settings and commands it runs.

kubernetes-validate carries the schemas (no network, no cluster): strict mode
refuses unknown fields as well as missing or mistyped ones. No cluster ever
ran these manifests; the remaining checks are the ones an API server or the
containers would make: selectors, references, env names, runworker options.
"""

from __future__ import annotations

import copy
import re
import shlex
from typing import Any

import kubernetes_validate
import pytest
import yaml

from inference.management.commands.runworker import Command as RunWorker
from tests.processes import REPO_ROOT

K8S_DIR = REPO_ROOT / "deploy" / "k8s"
COMPOSE = REPO_ROOT / "deploy" / "compose" / "compose.yaml"
# The oldest Kubernetes still widely run, and the newest the pinned validator carries.
KUBERNETES_VERSIONS = ("1.30", "1.37")
MODELS = {"smollm2-135m-instruct", "all-minilm-l6-v2"}


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


MANIFESTS = manifests()


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in MANIFESTS if doc["kind"] == kind]


def by_name(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [doc for doc in of_kind(kind) if doc["metadata"]["name"] == name]
    return doc


def pod_specs() -> list[dict[str, Any]]:
    return [doc["spec"]["template"]["spec"] for doc in of_kind("Deployment") + of_kind("Job")]


def worker_containers() -> list[dict[str, Any]]:
    return [
        container
        for doc in of_kind("Deployment")
        if doc["metadata"]["name"].startswith("worker-")
        for container in doc["spec"]["template"]["spec"]["containers"]
    ]


def settings_read_by_the_portal() -> set[str]:
    return set(re.findall(r'env\.\w+\(\s*"([A-Z0-9_]+)"', (REPO_ROOT / "portal" / "env.py").read_text()))


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "doc",
    [doc for _, doc in MANIFESTS],
    ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in MANIFESTS],
)
def test_manifest_follows_the_kubernetes_schema(doc, version):
    kubernetes_validate.validate(doc, version, strict=True)


def broken(change: str) -> dict[str, Any]:
    doc = copy.deepcopy(by_name("Deployment", "portal"))
    container = doc["spec"]["template"]["spec"]["containers"][0]
    if change == "no selector":
        del doc["spec"]["selector"]
    elif change == "misspelt field":
        container["readinesProbe"] = container.pop("readinessProbe")
    elif change == "wrong type":
        doc["spec"]["replicas"] = "two"
    elif change == "unknown kind":
        doc["kind"] = "Deploymnet"
    return doc


@pytest.mark.parametrize("change", ["no selector", "misspelt field", "wrong type", "unknown kind"])
def test_the_validator_refuses_a_broken_manifest(change):
    with pytest.raises((kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError)):
        kubernetes_validate.validate(broken(change), KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_template():
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    files = {path.name for path in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == files


def test_selectors_match_their_pod_labels():
    for doc in of_kind("Deployment"):
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), doc["metadata"]["name"]
    portal_labels = by_name("Deployment", "portal")["spec"]["template"]["metadata"]["labels"]
    assert by_name("Service", "portal")["spec"]["selector"].items() <= portal_labels.items()


def test_config_and_secret_hold_settings_the_portal_reads():
    secret = by_name("Secret", "portal-secrets")["stringData"]
    assert set(secret) == {"SECRET_KEY", "WORKER_TOKEN", "DATABASE_URL", "REDIS_URL"}
    names = set(secret) | set(by_name("ConfigMap", "portal-config")["data"])
    names |= set(compose()["x-portal-env"])
    assert names <= settings_read_by_the_portal()


def test_every_pod_reads_the_config_and_secret_that_exist():
    for spec in pod_specs():
        for container in spec["containers"]:
            sources = {(kind, ref["name"]) for source in container["envFrom"] for kind, ref in source.items()}
            assert sources == {("configMapRef", "portal-config"), ("secretRef", "portal-secrets")}


def test_probes_and_service_use_the_ports_the_commands_listen_on():
    portal = by_name("Deployment", "portal")["spec"]["template"]["spec"]["containers"][0]
    assert portal["command"] == shlex.split(compose()["services"]["portal-a"]["command"])
    ports = {port["name"]: port["containerPort"] for port in portal["ports"]}
    assert ports["http"] == int(portal["command"][portal["command"].index("-p") + 1])
    for probe in ("readinessProbe", "livenessProbe"):
        assert portal[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert by_name("Service", "portal")["spec"]["ports"][0]["targetPort"] == "http"
    for container in worker_containers():
        options = RunWorker().create_parser("manage.py", "runworker").parse_args(container["args"])
        assert container["ports"][0]["containerPort"] == options.port
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"


def test_workers_run_runworker_with_options_it_accepts_as_compose_does():
    parser = RunWorker().create_parser("manage.py", "runworker")
    k8s = {}
    for container in worker_containers():
        assert container["command"] == ["python", "manage.py", "runworker"]
        options = parser.parse_args(container["args"])  # an unknown option raises CommandError
        k8s[options.model_path] = options
        # Kubernetes expands $(NAME) only for variables the container defines.
        defined = {variable["name"] for variable in container.get("env", [])}
        assert set(re.findall(r"\$\((\w+)\)", " ".join(container["args"]))) <= defined
    composed = {}
    for name, service in compose()["services"].items():
        if name.startswith("worker-"):
            words = shlex.split(service["command"])
            assert words[:3] == ["python", "manage.py", "runworker"]
            options = parser.parse_args(words[3:])
            composed[options.model_path] = options
    assert set(k8s) == set(composed) == MODELS
    for model, options in k8s.items():
        assert (options.host, options.port) == (composed[model].host, composed[model].port)
