"""The renderer's inputs from the settings and the database: what the agent applies, export prints."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from fleet.kube.render import ClusterConfig, render_deployment
from fleet.models import Deployment
from fleet.services.scheduler import replica_memory


def cluster_config(*, namespace: str | None = None, image: str | None = None) -> ClusterConfig:
    """The settings' cluster (KUBE_*), with the command line's namespace or image where given."""
    return ClusterConfig(
        namespace=namespace or settings.KUBE_NAMESPACE,
        image=image or settings.KUBE_WORKER_IMAGE,
        secret=settings.KUBE_SECRET,
        drain_timeout=settings.WORKER_DRAIN_TIMEOUT,
        heartbeat_interval=settings.HEARTBEAT_INTERVAL,
        model_cache_claim=settings.KUBE_MODEL_CACHE_CLAIM,
    )


def desired_object(deployment: Deployment, config: ClusterConfig, *, replicas: int | None) -> dict[str, Any]:
    """The deployment's apps/v1 Deployment, its memory request estimated as the scheduler estimates it."""
    memory = replica_memory(deployment, [])
    return render_deployment(deployment, config, memory_bytes=memory, replicas=replicas)
