"""A one-node Kubernetes cluster in a test: the API server, a Deployment controller, a kubelet.

All three share one event loop in a thread and the one store. The controller
makes pods of each Deployment's template, rolling with maxSurge 1 and
maxUnavailable 0 by readiness. The kubelet plays the node `node-1`: for each
pod it starts a real process, `manage.py runworker` with the pod's
arguments and environment (values, `fieldRef`, `secretKeyRef`, `$(VAR)`
expansion; an emptyDir is a folder of the pod, a claim a folder of the
test), on a loopback address of its own (127.0.1.N: the pod IP; the
worker binds it instead of 0.0.0.0, as a pod's network namespace would only
show it that one), probes `/health` for readiness, restarts a container that
exited after a back-off (CrashLoopBackOff meanwhile, its last lines as the
termination message), and on deletion drains the worker as the preStop hook
does (SIGTERM), SIGKILLs it after the grace period, then removes the pod.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.fleet.kube.apiserver import ApiServer, Store, now_text
from tests.processes import REPO_ROOT

NODE = "node-1"
NODE_LABELS = {"kubernetes.io/hostname": NODE}
BACKOFF_SECONDS = 0.5  # the kubelet's is 10 s, doubling to 5 min: shortened for the tests


def template_hash(deployment: dict[str, Any]) -> str:
    text = json.dumps(deployment["spec"]["template"], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


@dataclass
class Container:
    """One pod's container on the node: its process now, its restarts, and where it stands."""

    ip: str
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    ready: bool = False
    backoff_until: float = 0.0
    last_terminated: dict[str, Any] | None = None
    error: str = ""  # why it cannot start (a missing Secret)
    killing_at: float | None = None
    probing: bool = False
    started: str = ""
    logs: list[Path] = field(default_factory=list)


class Cluster:
    def __init__(
        self, namespace: str, image_env: dict[str, str], log_dir: Path, claims: dict[str, Path] | None = None
    ) -> None:
        self.namespace, self.image_env, self.log_dir = namespace, image_env, log_dir
        self.claims = claims or {}  # PersistentVolumeClaim → the folder that is its volume
        self.store = Store.__new__(Store)  # built on the loop (its Condition binds to it)
        self.containers: dict[str, Container] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="cluster", daemon=True)
        self.port = 0
        self._next_ip = 1
        self.probes: set[asyncio.Task[None]] = set()

    # Lifecycle (from the test's thread)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        self.store = Store()
        self.server = ApiServer(self.store, lambda pod: pod["metadata"]["name"] in self.containers)
        self.runner = web.AppRunner(self.server.app, shutdown_timeout=2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1))
        self.tasks = [asyncio.create_task(self._every(0.05, step)) for step in (self.control, self.kubelet)]

    def stop(self) -> None:
        async def stop() -> None:
            self.server.closing = True
            for task in self.tasks:
                task.cancel()
            for container in self.containers.values():
                if container.process and container.process.poll() is None:
                    container.process.kill()
                    await asyncio.to_thread(container.process.wait, 10)
            await self.http.close()
            await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def call(self, function: Any, *args: Any) -> Any:
        """`function(*args)`, run on the cluster's loop: the store is the loop's alone."""

        async def run() -> Any:
            return function(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def kubeconfig(self, path: Path) -> Path:
        cluster = {"name": "test", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}
        context = {"name": "test", "context": {"cluster": "test", "user": "test"}}
        config = {
            "apiVersion": "v1", "kind": "Config", "clusters": [cluster], "contexts": [context],
            "users": [{"name": "test", "user": {"token": "test-token"}}], "current-context": "test",
        }  # fmt: skip
        path.write_text(json.dumps(config))
        return path

    def add_secret(self, name: str, values: dict[str, str]) -> None:
        data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
        meta = {"name": name, "namespace": self.namespace}
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": meta}
        self.call(self.store.put, "secrets", secret | {"data": data})

    def pods(self) -> list[dict[str, Any]]:
        return self.call(lambda: copy.deepcopy(self.store.of_kind("pods", self.namespace)))

    def deployments(self) -> list[dict[str, Any]]:
        return self.call(lambda: copy.deepcopy(self.store.of_kind("deployments", self.namespace)))

    def pid(self, pod: str) -> int | None:
        container = self.containers.get(pod)
        return container.process.pid if container and container.process else None

    async def _every(self, seconds: float, step: Any) -> None:
        while True:
            try:
                await step()
            except Exception as exc:  # a test would hang on a dead loop: say why, keep going
                print(f"cluster step {step.__name__} failed: {exc!r}", file=sys.stderr)
            await asyncio.sleep(seconds)

    # The Deployment controller

    async def control(self) -> None:
        owners = {d["metadata"]["uid"]: d for d in self.store.of_kind("deployments", self.namespace)}
        for pod in self.store.of_kind("pods", self.namespace):
            owner = (pod["metadata"].get("ownerReferences") or [{}])[0].get("uid")
            if owner not in owners and not pod["metadata"].get("deletionTimestamp"):
                self.delete_pod(pod)  # the garbage collector: its Deployment is gone
        for deployment in owners.values():
            self.roll(deployment)

    def roll(self, deployment: dict[str, Any]) -> None:
        uid, wanted = deployment["metadata"]["uid"], deployment["spec"].get("replicas", 1)
        current = template_hash(deployment)
        pods = [
            p for p in self.store.of_kind("pods", self.namespace)
            if (p["metadata"].get("ownerReferences") or [{}])[0].get("uid") == uid
            and not p["metadata"].get("deletionTimestamp")
        ]  # fmt: skip
        new = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") == current]
        old = [p for p in pods if p not in new]
        for _ in range(min(wanted - len(new), wanted + (1 if old else 0) - len(pods))):
            self.create_pod(deployment, current)
        ready = sum(map(is_ready, pods))
        # maxUnavailable 0: an old ready pod goes once one more than wanted is ready.
        for pod in sorted(old, key=is_ready):
            if not is_ready(pod) or ready > wanted:
                ready -= is_ready(pod)
                self.delete_pod(pod)
        if not old and len(new) > wanted:
            surplus = sorted(new, key=lambda p: (is_ready(p), p["metadata"]["creationTimestamp"]))
            for pod in surplus[: len(new) - wanted]:
                self.delete_pod(pod)
        status = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": len(pods), "updatedReplicas": len(new), "readyReplicas": ready,
            "availableReplicas": ready,
        }  # fmt: skip
        if deployment.get("status") != status:
            self.store.put("deployments", copy.deepcopy(deployment) | {"status": status})

    def create_pod(self, deployment: dict[str, Any], template: str) -> None:
        spec = copy.deepcopy(deployment["spec"]["template"])
        meta = spec.get("metadata", {})
        name = f"{deployment['metadata']['name']}-{template}-{secrets.token_hex(3)[:5]}"
        owner = {"apiVersion": "apps/v1", "kind": "Deployment", "controller": True}
        owner |= {"name": deployment["metadata"]["name"], "uid": deployment["metadata"]["uid"]}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name, "namespace": self.namespace, "ownerReferences": [owner],
                "labels": {**meta.get("labels", {}), "pod-template-hash": template},
                "annotations": meta.get("annotations", {}),
            },
            "spec": spec["spec"],
            "status": {"phase": "Pending"},
        }  # fmt: skip
        selector = pod["spec"].get("nodeSelector") or {}
        if selector.items() <= NODE_LABELS.items():
            pod["spec"]["nodeName"] = NODE
        else:
            message = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
            pod["status"]["conditions"] = [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
            ]
        self.store.put("pods", pod)

    def delete_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        if meta["name"] not in self.containers:
            self.store.remove("pods", meta["namespace"], meta["name"])
            return
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        updated = copy.deepcopy(pod)
        updated["metadata"] |= {"deletionTimestamp": now_text(), "deletionGracePeriodSeconds": grace}
        self.store.put("pods", updated)

    # The kubelet

    async def kubelet(self) -> None:
        for pod in self.store.of_kind("pods", self.namespace):
            if pod["spec"].get("nodeName") != NODE:
                continue
            name = pod["metadata"]["name"]
            container = self.containers.get(name)
            if pod["metadata"].get("deletionTimestamp"):
                await self.terminate(pod, container)
                continue
            if container is None:
                self._next_ip += 1
                container = self.containers[name] = Container(ip=f"127.0.1.{self._next_ip}")
                self.start_container(pod, container)
            elif container.process is not None and container.process.poll() is not None:
                self.exited(container)
            elif container.process is None and time.monotonic() >= container.backoff_until:
                container.restarts += 1
                self.start_container(pod, container)
            elif container.process is not None and not container.probing:
                container.probing = True
                self.probes.add(task := asyncio.create_task(self.probe(pod, container)))
                task.add_done_callback(self.probes.discard)
            self.report(pod, container)

    def environment(self, pod: dict[str, Any], ip: str) -> dict[str, str]:
        (spec,) = pod["spec"]["containers"]
        fields = {"metadata.name": pod["metadata"]["name"], "status.podIP": ip}
        fields["metadata.namespace"] = self.namespace
        env: dict[str, str] = {}
        for variable in spec.get("env", []):
            source = variable.get("valueFrom", {})
            if "fieldRef" in source:
                env[variable["name"]] = fields[source["fieldRef"]["fieldPath"]]
            elif "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self.store.get("secrets", self.namespace, ref["name"]) or {}
                if ref["key"] in secret.get("data", {}):
                    env[variable["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
                elif not ref.get("optional"):
                    raise LookupError(f'secret "{ref["name"]}" has no key "{ref["key"]}"')
            else:
                env[variable["name"]] = variable.get("value", "")
        return env

    def start_container(self, pod: dict[str, Any], container: Container) -> None:
        (spec,) = pod["spec"]["containers"]
        try:
            env = self.environment(pod, container.ip)
        except LookupError as exc:
            container.error = str(exc)
            return
        env = {name: self.mounted(pod, value) for name, value in env.items()}
        args = [self.expand(arg, env) for arg in spec.get("args", [])]
        args = [f"--host={container.ip}" if a == "--host=0.0.0.0" else a for a in args]
        assert spec["command"] == ["python", "manage.py", "runworker"], spec["command"]
        log = self.log_dir / f"{pod['metadata']['name']}-{container.restarts}.log"
        container.logs.append(log)
        self.store.logs[(self.namespace, pod["metadata"]["name"])] = container.logs
        with open(log, "wb") as out:
            container.process = subprocess.Popen(
                [sys.executable, str(REPO_ROOT / "manage.py"), "runworker", *args],
                cwd=REPO_ROOT, env=self.image_env | env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        container.ready, container.started = False, now_text()

    def mounted(self, pod: dict[str, Any], value: str) -> str:
        """A path under a volume's mountPath, where the volume is here (pods share one filesystem)."""
        (spec,) = pod["spec"]["containers"]
        folders = {}
        for volume in pod["spec"].get("volumes", []):
            if "emptyDir" in volume:
                folders[volume["name"]] = self.log_dir / pod["metadata"]["name"] / volume["name"]
            elif "persistentVolumeClaim" in volume:
                folders[volume["name"]] = self.claims[volume["persistentVolumeClaim"]["claimName"]]
        for mount in spec.get("volumeMounts", []):
            if mount["name"] in folders and value.startswith(mount["mountPath"]):
                folders[mount["name"]].mkdir(parents=True, exist_ok=True)
                return str(folders[mount["name"]]) + value[len(mount["mountPath"]) :]
        return value

    @staticmethod
    def expand(arg: str, env: dict[str, str]) -> str:
        for name, value in env.items():
            arg = arg.replace(f"$({name})", value)
        return arg

    def exited(self, container: Container) -> None:
        assert container.process is not None
        code = container.process.returncode
        tail = container.logs[-1].read_text(errors="replace").splitlines()[-20:] if container.logs else []
        container.last_terminated = {
            "exitCode": 128 - code if code < 0 else code,  # killed by a signal: 128 + its number
            "reason": "Completed" if code == 0 else "Error",
            "message": "\n".join(tail) if code else "",  # FallbackToLogsOnError
            "startedAt": container.started,
            "finishedAt": now_text(),
        }
        container.process, container.ready = None, False
        container.backoff_until = time.monotonic() + min(5.0, BACKOFF_SECONDS * 2**container.restarts)

    async def probe(self, pod: dict[str, Any], container: Container) -> None:
        (spec,) = pod["spec"]["containers"]
        port = spec["ports"][0]["containerPort"]
        try:
            path = spec["readinessProbe"]["httpGet"]["path"]
            async with self.http.get(f"http://{container.ip}:{port}{path}") as r:
                container.ready = r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            container.ready = False
        await asyncio.sleep(0.2)
        container.probing = False

    async def terminate(self, pod: dict[str, Any], container: Container | None) -> None:
        name = pod["metadata"]["name"]
        process = container.process if container else None
        if container is not None and process is not None and process.poll() is None:
            if container.killing_at is None:  # the preStop hook: the worker drains on SIGTERM
                process.send_signal(signal.SIGTERM)
                container.killing_at = time.monotonic() + pod["metadata"]["deletionGracePeriodSeconds"]
                container.ready = False
                self.report(pod, container)
            elif time.monotonic() > container.killing_at:
                process.kill()
            return
        self.containers.pop(name, None)
        self.store.remove("pods", self.namespace, name)

    def report(self, pod: dict[str, Any], container: Container) -> None:
        """Write the pod's status as the kubelet does, when it changed."""
        state: dict[str, Any]
        if container.error:
            state = {"waiting": {"reason": "CreateContainerConfigError", "message": container.error}}
        elif container.process is not None:
            state = {"running": {"startedAt": container.started}}
        else:
            state = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}}
        last = container.last_terminated
        status = {
            "phase": "Running", "podIP": container.ip, "hostIP": "127.0.0.1",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True" if container.ready else "False"},
            ],
            "containerStatuses": [{
                "name": "worker", "ready": container.ready, "restartCount": container.restarts,
                "state": state, "lastState": {"terminated": last} if last else {},
                "image": pod["spec"]["containers"][0]["image"], "started": container.process is not None,
            }],
        }  # fmt: skip
        if pod.get("status") != status:
            self.store.put("pods", copy.deepcopy(pod) | {"status": status})


def kill_container(cluster: Cluster, pod: str) -> int:
    """SIGKILL the worker process of `pod` (a crash the kubelet will see); its pid."""
    pid = cluster.pid(pod)
    assert pid is not None, pod
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return pid
