"""A deployment row as the Kubernetes objects that realise it: one pure function, no cluster, no database.

`runkubeagent` applies what `render_deployment` returns (server-side apply,
one field manager) and `manage.py deploy export --k8s` prints it, so a team
that deploys with Argo CD or Flux gets the identical spec. The one difference:
the agent leaves `spec.replicas` to the scale subresource once the object
exists (`replicas=None`), so that the autoscaler's decisions never fight an
apply.

What a pod is:
- `runworker` with the deployment's options (the allow-list of
  `fleet.options`, checked again here), bound to the pod's port and
  registered through the ORM as the agent's workers are; its address is the
  pod IP (downward API) and its worker id names its pod;
- its secrets (database URL, worker token, its own SECRET_KEY) come from the
  portal's Secret by reference, never as literal values; the rest of its
  environment is the few settings a worker reads;
- ready when `/health` answers 200 (it answers 503 while draining); on
  deletion the `preStop` hook drains it (SIGTERM to the worker, which
  finishes what it has), with a grace period above the drain timeout;
- rolling updates surge by one and never go below the ready count.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleet import options

if TYPE_CHECKING:
    from fleet.models import Deployment

GROUP = "fleet.modelportal.io"
DEPLOYMENT_LABEL = f"{GROUP}/deployment"
GENERATION_LABEL = f"{GROUP}/generation"
ROLE_LABEL = f"{GROUP}/role"
NAME_ANNOTATION = f"{GROUP}/deployment-name"
MANAGED_BY = "modelportal-runkubeagent"
# Every object runkubeagent manages carries these: its list and watch select on them.
COMMON_LABELS = {
    "app.kubernetes.io/name": "modelportal",
    "app.kubernetes.io/component": "worker",
    "app.kubernetes.io/managed-by": MANAGED_BY,
}
SELECTOR = ",".join(f"{k}={v}" for k, v in COMMON_LABELS.items())
NODE_PREFIX = "kubernetes/"  # fleet.models.KUBE_NODE_PREFIX: the node row of a namespace
CONTAINER = "worker"
# After the drain: the engine's shutdown (10 s at most), the aborts (2 s) and the row marked offline.
GRACE_AFTER_DRAIN = 30
# The preStop hook: drain the worker (PID 1) and wait until it has exited; the kubelet's SIGTERM then
# finds nothing left to stop.
PRE_STOP = ["sh", "-c", "kill -TERM 1; while kill -0 1 2>/dev/null; do sleep 1; done"]
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class ClusterConfig:
    """Where and how the workers run: the same for every deployment of one runkubeagent."""

    namespace: str
    image: str = "modelportal"
    secret: str = "worker-secrets"
    port: int = 8100
    drain_timeout: float = 30.0
    heartbeat_interval: float = 5.0
    model_cache: str = "/srv/portal/var/models"
    # A PersistentVolumeClaim for the model cache (ReadWriteMany where replicas span nodes): a model
    # converted once is not converted again at each pod's start, as it is in an emptyDir.
    model_cache_claim: str = ""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def label_value(text: str) -> str:
    """`text` as a label value (63 characters, alphanumeric ends): itself when it is one, else cut + hash."""
    if _LABEL_VALUE.match(text):
        return text
    cut = re.sub(r"[^A-Za-z0-9._-]", "-", text)[:54].strip("._-") or "x"
    return f"{cut}-{_digest(text)}"


def object_name(deployment: Deployment) -> str:
    """The Kubernetes Deployment's name: `worker-NAME[-ROLE]`, a DNS label short enough for pod names."""
    base = deployment.name.replace("_", "-").replace(".", "-")
    name = f"worker-{base}" + (f"-{deployment.role}" if deployment.role != "both" else "")
    if len(name) > 47 or name != name.rstrip("-"):
        name = f"{name[:38].rstrip('-')}-{_digest(deployment.name)}"
    return name


def worker_id(deployment: Deployment, namespace: str, pod: str) -> str:
    """The worker id of the pod `pod` (`Instance.identity` of its replica row)."""
    return f"{deployment.name}/{pod}@{NODE_PREFIX}{namespace}"


def gpus(deployment: Deployment) -> int:
    """GPUs one replica asks for: vLLM's tensor parallel size (1 by default), or 1 with --device=cuda."""
    extra = dict(o.partition("=")[::2] for o in options.parse_extra_options(deployment.extra_args))
    if deployment.backend == "vllm" or extra.get("--device") == "cuda":
        return int(extra.get("--tensor-parallel-size") or 1)
    return 0


def worker_args(deployment: Deployment, config: ClusterConfig) -> list[str]:
    """runworker's argv after `manage.py runworker`: `$(POD_NAME)` and `$(POD_IP)` are the kubelet's."""
    fields = [
        *options.deployment_fields(deployment),
        ("--host", "0.0.0.0"),
        ("--port", config.port),
        ("--worker-id", worker_id(deployment, config.namespace, "$(POD_NAME)")),
        ("--worker-address", f"http://$(POD_IP):{config.port}"),
    ]
    args = [options.option(flag, value) for flag, value in fields]
    args += options.parse_extra_options(deployment.extra_args)
    options.check_worker_argv(args, prefix=[])
    return args


def _drain_timeout(deployment: Deployment, config: ClusterConfig) -> float:
    for option in options.parse_extra_options(deployment.extra_args):
        flag, _, value = option.partition("=")
        if flag == "--drain-timeout":
            return float(value)
    return config.drain_timeout


def _secret(name: str, config: ClusterConfig, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": config.secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def worker_env(deployment: Deployment, config: ClusterConfig) -> list[dict[str, Any]]:
    """Only what a worker reads: its pod, its secrets by reference, a few plain settings."""
    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        _secret("DATABASE_URL", config, "DATABASE_URL"),
        _secret("WORKER_TOKEN", config, "WORKER_TOKEN"),
        _secret("SECRET_KEY", config, "SECRET_KEY"),  # a Secret of the workers: not the portals' key
        _secret("REDIS_URL", config, "REDIS_URL", optional=True),
        {"name": "HEARTBEAT_INTERVAL", "value": f"{config.heartbeat_interval:g}"},
        {"name": "WORKER_DRAIN_TIMEOUT", "value": f"{_drain_timeout(deployment, config):g}"},
        {"name": "MODEL_CACHE_DIR", "value": config.model_cache},
        {"name": "ENV_FILE", "value": "/dev/null"},
    ]


def _resources(deployment: Deployment, memory_bytes: int) -> dict[str, Any]:
    requests: dict[str, str] = {"memory": f"{math.ceil(memory_bytes / 2**20)}Mi"}
    resources: dict[str, Any] = {"requests": requests}
    if count := gpus(deployment):
        requests["nvidia.com/gpu"] = str(count)
        resources["limits"] = {"nvidia.com/gpu": str(count)}  # extended resources: limits = requests
    return resources


def _container(deployment: Deployment, config: ClusterConfig, memory_bytes: int) -> dict[str, Any]:
    return {
        "name": CONTAINER,
        "image": config.image,
        "command": ["python", "manage.py", "runworker"],
        "args": worker_args(deployment, config),
        "ports": [{"name": "http", "containerPort": config.port}],
        "env": worker_env(deployment, config),
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 2,
            "timeoutSeconds": 3,
        },
        # A model loads for minutes: liveness only checks the port, once it is open.
        "startupProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 5, "failureThreshold": 120},
        "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 20, "failureThreshold": 3},
        "lifecycle": {"preStop": {"exec": {"command": PRE_STOP}}},
        # A crash's last log lines become its termination message: the admin shows them.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": _resources(deployment, memory_bytes),
        "volumeMounts": [{"name": "model-cache", "mountPath": config.model_cache}],
    }


def labels(deployment: Deployment) -> dict[str, str]:
    return {
        **COMMON_LABELS,
        DEPLOYMENT_LABEL: label_value(deployment.name),
        ROLE_LABEL: deployment.role,
        GENERATION_LABEL: str(deployment.generation),
    }


def _cache_volume(config: ClusterConfig) -> dict[str, Any]:
    if config.model_cache_claim:
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": config.model_cache_claim}}
    return {"name": "model-cache", "emptyDir": {}}


def _pod_spec(deployment: Deployment, config: ClusterConfig, memory_bytes: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": math.ceil(_drain_timeout(deployment, config)) + GRACE_AFTER_DRAIN,
        "automountServiceAccountToken": False,  # a worker talks to the database, never to the cluster
        "containers": [_container(deployment, config, memory_bytes)],
        "volumes": [_cache_volume(config)],
    }
    if deployment.required_labels:
        spec["nodeSelector"] = {str(k): str(v) for k, v in deployment.required_labels.items()}
    if deployment.placement == "spread":
        selector = {"matchLabels": {**COMMON_LABELS, DEPLOYMENT_LABEL: label_value(deployment.name)}}
        spec["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": selector,
            }
        ]
    return spec


def render_deployment(
    deployment: Deployment, config: ClusterConfig, *, memory_bytes: int, replicas: int | None
) -> dict[str, Any]:
    """The apps/v1 Deployment of one deployment row; `replicas=None` leaves them to the scale subresource.

    Raises `fleet.options.OptionError` for options outside the allow-list.
    """
    every = labels(deployment)
    selector = {**COMMON_LABELS, DEPLOYMENT_LABEL: every[DEPLOYMENT_LABEL], ROLE_LABEL: deployment.role}
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {
            "metadata": {"labels": dict(every), "annotations": {NAME_ANNOTATION: deployment.name}},
            "spec": _pod_spec(deployment, config, memory_bytes),
        },
    }
    if replicas is not None:
        spec = {"replicas": replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": object_name(deployment),
            "namespace": config.namespace,
            "labels": dict(every),
            "annotations": {NAME_ANNOTATION: deployment.name},
        },
        "spec": spec,
    }
