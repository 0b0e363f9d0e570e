"""The Kubernetes calls of `runkubeagent`, on one namespace, through the official `kubernetes` client.

Objects travel as plain dicts, as the API serves them (`_preload_content=False`
and JSON): the renderer writes dicts, and the status reader reads them.

- Deployments are applied server-side (`application/apply-patch+yaml`) under
  one field manager, with `force`: this agent owns the fields it renders.
- Replicas go through the scale subresource, so that an apply never undoes
  the autoscaler's last decision.
- Pods are listed, then watched from the list's resourceVersion (`PodWatch`,
  a thread); a watch that expired (410 Gone) or failed lists again.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError

from fleet.kube.render import CONTAINER, SELECTOR

logger = logging.getLogger(__name__)

FIELD_MANAGER = "modelportal-runkubeagent"
APPLY = "application/apply-patch+yaml"
LOG_LINES = 20
WATCH_SECONDS = 60  # the server ends each watch after this long; the thread watches again from there


def api_client(*, kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """In a pod, its ServiceAccount; elsewhere (or with `kubeconfig`), a kubeconfig file."""
    if kubeconfig is None and context is None:
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        except ConfigException:
            pass  # not in a cluster: the default kubeconfig (~/.kube/config, $KUBECONFIG)
    return config.new_client_from_config(config_file=kubeconfig, context=context)


def _json(response: Any) -> dict[str, Any]:
    return dict(json.loads(response.data))


class KubeApi:
    """Deployments, their scale, pods and pod logs of one namespace."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.namespace = namespace
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)

    def apply(self, obj: dict[str, Any]) -> None:
        self.apps.patch_namespaced_deployment(
            obj["metadata"]["name"],
            self.namespace,
            obj,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type=APPLY,
            _preload_content=False,
        )

    def scale(self, name: str, replicas: int) -> None:
        body = {"spec": {"replicas": replicas}}
        self.apps.patch_namespaced_deployment_scale(
            name,
            self.namespace,
            body,
            field_manager=FIELD_MANAGER,
            _content_type="application/merge-patch+json",
            _preload_content=False,
        )

    def delete(self, name: str) -> None:
        try:
            self.apps.delete_namespaced_deployment(name, self.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def deployments(self) -> dict[str, dict[str, Any]]:
        """This agent's Deployments by name."""
        listed = self.apps.list_namespaced_deployment(
            self.namespace, label_selector=SELECTOR, _preload_content=False
        )
        return {item["metadata"]["name"]: item for item in _json(listed)["items"]}

    def pods(self) -> tuple[list[dict[str, Any]], str]:
        """This agent's pods, and the resourceVersion to watch from."""
        listed = _json(
            self.core.list_namespaced_pod(self.namespace, label_selector=SELECTOR, _preload_content=False)
        )
        return listed["items"], listed["metadata"]["resourceVersion"]

    def pod_events(self, resource_version: str) -> Iterator[dict[str, Any]]:
        """ADDED, MODIFIED and DELETED events of this agent's pods after `resource_version`."""
        yield from watch.Watch().stream(
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=SELECTOR,
            resource_version=resource_version,
            timeout_seconds=WATCH_SECONDS,
            deserialize=False,
        )

    def log_tail(self, pod: str, *, previous: bool) -> str:
        """The last lines of the worker's log (`previous`: of the container that exited before this one)."""
        try:
            response = self.core.read_namespaced_pod_log(
                pod,
                self.namespace,
                container=CONTAINER,
                previous=previous,
                tail_lines=LOG_LINES,
                _preload_content=False,
            )
        except ApiException as exc:
            return f"(no log: {exc.status} {exc.reason})"
        data: bytes = response.data  # type: ignore[attr-defined]  # the raw response: no preload
        return data.decode(errors="replace")


class PodWatch(threading.Thread):
    """The namespace's pods of this agent, kept current by list + watch; `changed` is set on each event."""

    def __init__(self, api: KubeApi) -> None:
        super().__init__(name="pod-watch", daemon=True)
        self.api = api
        self.pods: dict[str, dict[str, Any]] = {}
        self.changed = threading.Event()
        self.synced = threading.Event()
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.pods.values())

    def run(self) -> None:
        version: str | None = None
        while not self.stopping.is_set():
            try:
                if version is None:
                    items, version = self.api.pods()
                    with self._lock:
                        self.pods = {pod["metadata"]["name"]: pod for pod in items}
                    self.synced.set()
                    self.changed.set()
                for event in self.api.pod_events(version):
                    version = self._follow(event) or version
                    if self.stopping.is_set():
                        return
            except ApiException as exc:
                if exc.status != 410:
                    logger.warning("Watching pods failed: %s %s", exc.status, exc.reason)
                    self.stopping.wait(1.0)
                version = None  # expired or failed: list again
            except (HTTPError, OSError) as exc:
                logger.warning("The API server is unreachable: %s", exc)
                version = None
                self.stopping.wait(1.0)

    def _follow(self, event: dict[str, Any]) -> str | None:
        pod = event.get("object") or {}
        name = pod.get("metadata", {}).get("name")
        if event.get("type") == "BOOKMARK" or not name:
            return str(pod.get("metadata", {}).get("resourceVersion") or "") or None
        with self._lock:
            if event["type"] == "DELETED":
                self.pods.pop(name, None)
            else:
                self.pods[name] = pod
        self.changed.set()
        return str(pod["metadata"].get("resourceVersion") or "") or None
