"""`runkubeagent`'s loop: realise the deployments that run on Kubernetes, and report their pods as replicas.

Each tick (every `interval` seconds, or sooner when a pod changed) the agent
that holds the lease (`fleet.services.leases`; the others wait):

1. heartbeats the node row of its namespace (`kubernetes/NAMESPACE`), and
   runs the scheduler, whose autoscaler sets each deployment's replicas;
2. applies each deployment's rendered Deployment when it changed (a new
   generation rolls in the cluster), sets its replicas through the scale
   subresource, and deletes the Deployments of rows gone or moved to agents;
3. turns the watched pods into replica rows (`fleet.kube.status`), the last
   log lines of a crashed container included, and forgets the rows of pods
   that are gone (their workers' rows with them).

Workers register through the ORM as the agents' do, so the portals dispatch
to pods with no Service in between.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass

from django.db import DatabaseError, close_old_connections
from django.utils import timezone
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from fleet.kube.backend import KubeApi, PodWatch
from fleet.kube.render import NODE_PREFIX, ClusterConfig, object_name
from fleet.kube.spec import desired_object
from fleet.kube.status import PodReplica, pod_replica
from fleet.models import Deployment, Instance, InstanceState, Node, RunsOn
from fleet.options import OptionError
from fleet.services import leases, nodes, scheduler
from fleet.services.scheduler import replica_memory
from registry.models import Worker
from registry.services import workers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KubeAgentOptions:
    interval: float = 2.0
    lease_seconds: float = 15.0
    heartbeat_interval: float = 5.0
    holder: str = f"{socket.gethostname()}:{os.getpid()}"


class KubeAgent:
    def __init__(self, api: KubeApi, config: ClusterConfig, options: KubeAgentOptions) -> None:
        self.api, self.config, self.options = api, config, options
        self.watch = PodWatch(api)
        self.stopping = threading.Event()
        self.applied: dict[str, str] = {}  # Deployment name → the spec last applied (JSON)
        self.node: Node | None = None
        self.leading = False

    def run(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        self.watch.start()
        while not self.stopping.is_set():
            self.tick()
            self.watch.changed.wait(self.options.interval)
            self.watch.changed.clear()
        self.watch.stopping.set()
        try:
            leases.release_kube_lease(holder=self.options.holder)
        except DatabaseError as exc:
            logger.warning("Could not release the lease: %s", exc)

    def _stop(self, *_: object) -> None:
        self.stopping.set()
        self.watch.changed.set()

    def tick(self) -> None:
        """One pass, if this agent leads; never raises for the database or the API server being away."""
        try:
            close_old_connections()
            leading = leases.hold_kube_lease(holder=self.options.holder, seconds=self.options.lease_seconds)
            if leading != self.leading:
                logger.info("%s the lease", "Holding" if leading else "Waiting for")
                self.leading, self.applied = leading, {}
            if not leading:
                return
            self.heartbeat()
            scheduler.reconcile()
            self.realise()
            if self.watch.synced.is_set():
                self.report()
        except DatabaseError as exc:
            logger.warning("Database unavailable: %s", exc)
        except (ApiException, HTTPError, OSError) as exc:
            logger.warning("The API server refused or is unreachable: %s", exc)

    def heartbeat(self) -> None:
        name = f"{NODE_PREFIX}{self.config.namespace}"
        facts = nodes.NodeFacts(name=name, address="", agent_pid=os.getpid())
        if self.node is None or not nodes.record_node_heartbeat(
            node_id=self.node.pk, available_memory_bytes=0, interval=self.options.heartbeat_interval
        ):
            self.node = nodes.register_node(facts=facts, interval=self.options.heartbeat_interval)

    # Deployments

    def realise(self) -> None:
        existing = self.api.deployments()
        wanted: set[str] = set()
        for deployment in Deployment.objects.filter(runs_on=RunsOn.KUBERNETES):
            name = object_name(deployment)
            wanted.add(name)
            current = existing.get(name)
            try:
                rendered = desired_object(deployment, self.config, replicas=None)
            except OptionError as exc:
                self.set_pending(deployment, f"Refused: {exc}")
                continue
            text = json.dumps(rendered, sort_keys=True)
            if current is None or self.applied.get(name) != text:
                if current is None:  # a new object starts at its replicas; then they are the scale's
                    rendered["spec"] = {"replicas": deployment.replicas, **rendered["spec"]}
                self.api.apply(rendered)
                self.applied[name] = text
                logger.info("Applied %s (generation %d)", name, deployment.generation)
            if current is not None and current.get("spec", {}).get("replicas") != deployment.replicas:
                self.api.scale(name, deployment.replicas)
                logger.info("Scaled %s to %d", name, deployment.replicas)
        for name in set(existing) - wanted:
            self.api.delete(name)
            self.applied.pop(name, None)
            logger.info("Deleted %s: its deployment is gone or runs on agents", name)

    def set_pending(self, deployment: Deployment, reason: str) -> None:
        if deployment.pending_reason != reason[:500]:
            Deployment.objects.filter(pk=deployment.pk).update(pending_reason=reason[:500])

    # Replicas

    def report(self) -> None:
        assert self.node is not None
        replicas = [r for r in map(pod_replica, self.watch.snapshot()) if r is not None]
        rows = {d.name: d for d in Deployment.objects.filter(runs_on=RunsOn.KUBERNETES)}
        mine = Instance.objects.filter(node=self.node).select_related("deployment", "node")
        known = {i.pod: i for i in mine}
        for replica in replicas:
            deployment = rows.get(replica.deployment)
            if deployment is not None:
                self.record(deployment, known.pop(replica.pod, None), replica)
        for gone in known.values():
            Worker.objects.filter(identity=gone.identity).delete()
            gone.delete()
        for deployment in rows.values():
            pending = [r.detail for r in replicas if r.deployment == deployment.name and r.state == "pending"]
            reason = f"{len(pending)} replica(s) pending: {pending[0]}" if pending else ""
            self.set_pending(deployment, reason)

    def record(self, deployment: Deployment, instance: Instance | None, replica: PodReplica) -> None:
        """Create or update the replica row of one pod; a crash marks its worker offline at once."""
        assert self.node is not None
        if instance is None:
            instance = Instance.objects.create(
                deployment=deployment,
                node=self.node,
                pod=replica.pod,
                generation=replica.generation,
                memory_bytes=replica_memory(deployment, []),
                port=self.config.port,
            )
        fields: dict[str, object] = {
            "generation": replica.generation,
            "state": replica.state,
            "wanted": replica.wanted,
            "restarts": replica.restarts,
            "crashes_in_a_row": replica.restarts if replica.state in ("crashed", "failed") else 0,
            "detail": replica.detail,
            "started_at": replica.started_at,
        }
        if replica.state == InstanceState.READY and instance.state != InstanceState.READY:
            fields["ready_at"] = timezone.now()
        crashed_now = replica.state in ("crashed", "failed") and instance.state not in ("crashed", "failed")
        if crashed_now:
            workers.mark_offline(identity=instance.identity, error=replica.detail)
        again = crashed_now or instance.restarts != replica.restarts or not instance.log_tail
        if replica.crashed and again:
            fields["log_tail"] = self.api.log_tail(replica.pod, previous=replica.restarts > 0)
        changed = {k: v for k, v in fields.items() if getattr(instance, k) != v}
        if changed:
            Instance.objects.filter(pk=instance.pk).update(**changed, updated_at=timezone.now())
