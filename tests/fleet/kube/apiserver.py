"""An in-memory Kubernetes API server for tests: the real `kubernetes` client talks to it over HTTP.

Written on aiohttp rather than on kmock 0.8: kmock's emulator stores objects
as plain merged dicts, answers a PATCH of an absent object with 404 (a
server-side apply creates it), has no resourceVersion to watch from, no label
selectors and no scale or log subresources, so extending it would have meant
replacing every handler it has.

What it serves, for namespaced deployments, pods and secrets, as the real one does:
- list with `labelSelector` (k=v, k!=v, k), answering a resourceVersion;
- watch from a resourceVersion (`watch=true`), events as JSON lines, ended
  after `timeoutSeconds`;
- server-side apply (`application/apply-patch+yaml`, `fieldManager`
  required): creates, or replaces the fields the manager sent (a
  simplification: one manager owns every field it sends, `spec.replicas` left
  as it is when the apply omits it), raising `metadata.generation` when the
  spec changed; merge patches elsewhere;
- the scale subresource of deployments, and pods' `log` (with `previous`
  and `tailLines`) from the files the kubelet writes;
- graceful pod deletion: a running pod gets a deletionTimestamp, and the
  kubelet removes it once its container has stopped.
Every request is recorded (`requests`) for the tests to assert on.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

Key = tuple[str, str, str]  # kind (plural), namespace, name


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key) != value.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def status_error(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}
    return web.json_response(body | {"reason": reason, "message": message}, status=code)


class Store:
    """Objects by (kind, namespace, name) and every change since the start, by resourceVersion."""

    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, kind, type, object)
        self.version = 0
        self.changed = asyncio.Condition()
        self.logs: dict[tuple[str, str], list[Path]] = {}  # (namespace, pod) → its containers' logs

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    def of_kind(self, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        return [
            obj
            for (k, ns, _), obj in self.objects.items()
            if k == kind and ns == namespace and matches(obj["metadata"].get("labels") or {}, selector)
        ]

    def put(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        key = (kind, meta["namespace"], meta["name"])
        event = "MODIFIED" if key in self.objects else "ADDED"
        if event == "ADDED":
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_text())
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        self.objects[key] = obj
        self._record(kind, event, obj)
        return obj

    def remove(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.pop((kind, namespace, name), None)
        if obj is not None:
            self.version += 1
            obj["metadata"]["resourceVersion"] = str(self.version)
            self._record(kind, "DELETED", obj)
        return obj

    def _record(self, kind: str, event: str, obj: dict[str, Any]) -> None:
        self.history.append((self.version, kind, event, copy.deepcopy(obj)))

        async def notify() -> None:
            async with self.changed:
                self.changed.notify_all()

        asyncio.get_running_loop().create_task(notify())


class ApiServer:
    """The aiohttp application over a `Store`; `on_pod_delete` lets the kubelet drain before removal."""

    def __init__(self, store: Store, pod_running: Callable[[dict[str, Any]], bool]) -> None:
        self.store = store
        self.pod_running = pod_running
        self.requests: list[tuple[str, str, str]] = []  # (method, path, content type)
        self.closing = False  # set on shutdown: open watches end
        self.app = web.Application(middlewares=[self._record])
        apps, core = "/apis/apps/v1/namespaces/{ns}", "/api/v1/namespaces/{ns}"
        add = self.app.router.add_route
        for kind, base in (("deployments", apps), ("pods", core), ("secrets", core)):
            add("GET", f"{base}/{kind}", self._list(kind))
            add("POST", f"{base}/{kind}", self._create(kind))
            add("GET", f"{base}/{kind}/{{name}}", self._read(kind))
            add("PATCH", f"{base}/{kind}/{{name}}", self._patch(kind))
            add("DELETE", f"{base}/{kind}/{{name}}", self._delete(kind))
        add("GET", f"{apps}/deployments/{{name}}/scale", self._read_scale)
        add("PATCH", f"{apps}/deployments/{{name}}/scale", self._patch_scale)
        add("GET", f"{core}/pods/{{name}}/log", self._log)

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs, request.content_type))
        response: web.StreamResponse = await handler(request)
        return response

    def _list(self, kind: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            ns, selector = request.match_info["ns"], request.query.get("labelSelector", "")
            if request.query.get("watch") in ("true", "1"):
                return await self._watch(request, kind, ns, selector)
            items = [copy.deepcopy(obj) for obj in self.store.of_kind(kind, ns, selector)]
            meta = {"resourceVersion": str(self.store.version)}
            return web.json_response({"kind": "List", "apiVersion": "v1", "metadata": meta, "items": items})

        return handle

    async def _watch(self, request: web.Request, kind: str, ns: str, selector: str) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or self.store.version)
        deadline = asyncio.get_running_loop().time() + float(request.query.get("timeoutSeconds", 300))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        while (left := deadline - asyncio.get_running_loop().time()) > 0 and not self.closing:
            for version, k, event, obj in [e for e in self.store.history if e[0] > since]:
                since = version
                meta = obj["metadata"]
                if k == kind and meta["namespace"] == ns and matches(meta.get("labels") or {}, selector):
                    await response.write(json.dumps({"type": event, "object": obj}).encode() + b"\n")
            async with self.store.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.store.changed.wait(), timeout=min(left, 0.5))
        await response.write_eof()
        return response

    def _create(self, kind: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            obj = await request.json()
            obj["metadata"]["namespace"] = request.match_info["ns"]
            if self.store.get(kind, request.match_info["ns"], obj["metadata"]["name"]):
                return status_error(409, "AlreadyExists", f"{kind} {obj['metadata']['name']} exists")
            if kind == "deployments":
                obj["metadata"]["generation"] = 1
            return web.json_response(self.store.put(kind, obj), status=201)

        return handle

    def _read(self, kind: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            obj = self.store.get(kind, request.match_info["ns"], request.match_info["name"])
            if obj is None:
                return status_error(404, "NotFound", f'{kind} "{request.match_info["name"]}" not found')
            return web.json_response(obj)

        return handle

    def _patch(self, kind: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            ns, name = request.match_info["ns"], request.match_info["name"]
            body, current = await request.json(), self.store.get(kind, ns, name)
            if request.content_type == "application/apply-patch+yaml":
                manager = request.query.get("fieldManager")
                if not manager:
                    return status_error(400, "BadRequest", "fieldManager is required for apply patch")
                return web.json_response(self._apply(kind, ns, name, body, current, manager))
            if current is None:
                return status_error(404, "NotFound", f'{kind} "{name}" not found')
            updated = merge(copy.deepcopy(current), body)
            return web.json_response(self.store.put(kind, self._generation(current, updated)))

        return handle

    def _apply(
        self, kind: str, ns: str, name: str, body: dict[str, Any], current: Any, manager: str
    ) -> dict[str, Any]:
        body["metadata"] |= {"namespace": ns, "name": name}
        managed = [{"manager": manager, "operation": "Apply", "time": now_text()}]
        if current is None:
            body["metadata"] |= {"generation": 1, "managedFields": managed}
            if kind == "deployments":
                body["spec"].setdefault("replicas", 1)
            return self.store.put(kind, body)
        updated = copy.deepcopy(current)
        for field in ("labels", "annotations"):
            updated["metadata"][field] = body["metadata"].get(field, {})
        spec = copy.deepcopy(body.get("spec", {}))
        if "replicas" in current.get("spec", {}):
            spec.setdefault("replicas", current["spec"]["replicas"])
        updated["spec"] = spec
        updated["metadata"]["managedFields"] = managed
        return self.store.put(kind, self._generation(current, updated))

    @staticmethod
    def _generation(current: dict[str, Any], updated: dict[str, Any]) -> dict[str, Any]:
        if "generation" in current["metadata"] and current.get("spec") != updated.get("spec"):
            updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
        return updated

    def _delete(self, kind: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            ns, name = request.match_info["ns"], request.match_info["name"]
            obj = self.store.get(kind, ns, name)
            if obj is None:
                return status_error(404, "NotFound", f'{kind} "{name}" not found')
            if kind == "pods" and self.pod_running(obj):
                if not obj["metadata"].get("deletionTimestamp"):
                    grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
                    updated = copy.deepcopy(obj)
                    marks = {"deletionTimestamp": now_text(), "deletionGracePeriodSeconds": grace}
                    updated["metadata"] |= marks
                    return web.json_response(self.store.put(kind, updated))
                return web.json_response(obj)
            return web.json_response(self.store.remove(kind, ns, name))

        return handle

    def _scale(self, deployment: dict[str, Any]) -> dict[str, Any]:
        meta = deployment["metadata"]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
            "spec": {"replicas": deployment["spec"].get("replicas", 1)},
            "status": {"replicas": deployment.get("status", {}).get("replicas", 0)},
        }

    async def _read_scale(self, request: web.Request) -> web.Response:
        obj = self.store.get("deployments", request.match_info["ns"], request.match_info["name"])
        if obj is None:
            return status_error(404, "NotFound", "deployment not found")
        return web.json_response(self._scale(obj))

    async def _patch_scale(self, request: web.Request) -> web.Response:
        obj = self.store.get("deployments", request.match_info["ns"], request.match_info["name"])
        if obj is None:
            return status_error(404, "NotFound", "deployment not found")
        replicas = (await request.json()).get("spec", {}).get("replicas")
        if not isinstance(replicas, int) or replicas < 0:
            return status_error(422, "Invalid", "spec.replicas must be a whole number")
        updated = copy.deepcopy(obj)
        updated["spec"]["replicas"] = replicas
        return web.json_response(self._scale(self.store.put("deployments", self._generation(obj, updated))))

    async def _log(self, request: web.Request) -> web.Response:
        logs = self.store.logs.get((request.match_info["ns"], request.match_info["name"]), [])
        previous = request.query.get("previous") in ("true", "1")
        if len(logs) < (2 if previous else 1):
            which = "previous terminated" if previous else "running"
            return status_error(400, "BadRequest", f"no {which} container")
        lines = logs[-2 if previous else -1].read_text(errors="replace").splitlines()
        tail = int(request.query.get("tailLines") or len(lines))
        return web.Response(text="\n".join(lines[-tail:]) + "\n", content_type="text/plain")
