"""A one-node cluster on loopback for the Kubernetes backend's tests (see cluster.py)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from fleet.kube.backend import KubeApi, api_client
from tests.fleet.kube.cluster import Cluster
from tests.processes import subprocess_env

NAMESPACE = "models"
MODEL_CACHE_CLAIM = "model-cache"
WORKER_TOKEN = secrets.token_urlsafe(24)
# What the image holds beside the pod's own environment: the interpreter's paths and the test settings.
IMAGE_VARIABLES = (
    "PATH", "HOME", "LANG", "VIRTUAL_ENV", "DJANGO_SETTINGS_MODULE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM", "PYTHONUNBUFFERED", "PORTAL_VAR_DIR",
)  # fmt: skip


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    env = subprocess_env()
    image = {name: env[name] for name in IMAGE_VARIABLES if name in env}
    # The claim of the model cache is the cache the other tests fill: SmolLM2 is converted once.
    claims = {MODEL_CACHE_CLAIM: Path(settings.MODEL_CACHE_DIR)}
    running = Cluster(NAMESPACE, image | {"HEARTBEAT_INTERVAL": "1"}, tmp_path, claims)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def kube(cluster: Cluster, tmp_path: Path) -> KubeApi:
    path = cluster.kubeconfig(tmp_path / "kubeconfig")
    return KubeApi(api_client(kubeconfig=str(path)), NAMESPACE)


def add_worker_secret(cluster: Cluster, database_url: str) -> None:
    values = {"DATABASE_URL": database_url, "WORKER_TOKEN": WORKER_TOKEN}
    values["SECRET_KEY"] = secrets.token_urlsafe(40)  # the workers' own
    cluster.add_secret("worker-secrets", values)
