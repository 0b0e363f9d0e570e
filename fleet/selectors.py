"""Reads of the fleet that other apps need."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import Any

from django.db.models import F, Prefetch, Window
from django.db.models.functions import RowNumber

from fleet.catalogue import estimate_memory
from fleet.models import KUBE_NODE_PREFIX, Deployment, DeploymentEvent, Instance, Node
from fleet.services.deployments import summarize
from inference.loading import PACKAGED_MODELS

EVENTS_SHOWN = 5  # per deployment on the dashboard; the admin's deployment page lists them all


def list_on_demand_model_names() -> set[str]:
    """Served names of elastic deployments that start on a request (they are listed while cold)."""
    elastic = Deployment.objects.filter(min_replicas__isnull=False, max_replicas__gt=0)
    return {name for deployment in elastic for name in deployment.served_names}


def list_deployment_rows() -> list[dict[str, Any]]:
    """Every deployment with its replicas as the dashboard shows them (two queries)."""
    instances = Instance.objects.select_related("node").order_by("pk")
    rows = []
    for deployment in Deployment.objects.prefetch_related(Prefetch("instances", queryset=instances)):
        replicas = list(deployment.instances.all())
        for instance in replicas:
            instance.deployment = deployment  # its identity reads the name: no query per row
        rows.append(
            {
                "id": deployment.id,
                "name": deployment.name,
                "model_path": deployment.model_path,
                **asdict(summarize(deployment, replicas)),
                "pending_reason": deployment.pending_reason,
                "instances": [
                    {
                        "identity": i.identity,
                        "node": i.node.name,
                        "state": i.state if i.wanted else "stopping",
                        "port": i.port,
                        "restarts": i.restarts,
                        "detail": i.detail,
                    }
                    for i in replicas
                ],
            }
        )
    return rows


def list_recent_events(*, per_deployment: int = EVENTS_SHOWN) -> dict[str, list[dict[str, Any]]]:
    """Each deployment's newest scaling events, newest first, keyed by its id (one query)."""
    newest = Window(RowNumber(), partition_by=F("deployment_id"), order_by=(F("at").desc(), F("id").desc()))
    events = (
        DeploymentEvent.objects.annotate(rank=newest)
        .filter(rank__lte=per_deployment)
        .order_by("deployment_id", "-at", "-id")
        .values("deployment_id", "at", "action", "replicas_before", "replicas_after", "reason")
    )
    by_deployment: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        shown = {k: v for k, v in event.items() if k != "deployment_id"}
        by_deployment[str(event["deployment_id"])].append({**shown, "at": event["at"].isoformat()})
    return dict(by_deployment)


@dataclass(frozen=True)
class CatalogueEntry:
    """One model of the online nodes' catalogues, as the deployment form offers it."""

    path: str  # what the deployment's model path takes
    name: str
    format: str
    bytes: int  # of its weights
    memory: int  # a replica's estimate (fleet.catalogue.estimate_memory)
    nodes: tuple[str, ...]  # the online nodes that have it
    fits_on: tuple[str, ...]  # those of them with that much memory free at their last heartbeat


def model_format(path: str) -> str:
    if path in PACKAGED_MODELS:
        return "packaged GGUF" if PACKAGED_MODELS[path][1].endswith(".gguf") else "packaged folder"
    return "GGUF" if path.endswith(".gguf") else "Hugging Face folder"


def list_catalogue() -> list[CatalogueEntry]:
    """Every model some online agent's node can serve, once, with the nodes that have it (one query)."""
    nodes = Node.objects.online().exclude(name__startswith=KUBE_NODE_PREFIX)
    found: dict[str, list[tuple[Node, int]]] = defaultdict(list)
    for node in nodes.only("name", "available_memory_bytes", "catalogue"):
        for entry in node.catalogue:
            if isinstance(entry, dict) and entry.get("path"):
                found[str(entry["path"])].append((node, int(entry.get("bytes") or 0)))
    entries = []
    for path, holders in sorted(found.items(), key=lambda item: (item[0] not in PACKAGED_MODELS, item[0])):
        weights = max(size for _, size in holders)
        memory = estimate_memory(weights)
        entries.append(
            CatalogueEntry(
                path=path, name=PurePath(path).name, format=model_format(path), bytes=weights, memory=memory,
                nodes=tuple(n.name for n, _ in holders),
                fits_on=tuple(n.name for n, _ in holders if n.available_memory_bytes >= memory),
            )
        )  # fmt: skip
    return entries
