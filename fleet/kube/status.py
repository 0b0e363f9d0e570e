"""What a pod says about its replica: a pure function from the pod (as the API serves it) to a replica row.

The rows are the ones the admin and the dashboard already show for the
agents' replicas (`fleet.models.Instance`):

- pending while unscheduled (the scheduler's message is the detail) or its
  container is being created;
- starting while the worker runs and `/health` does not answer 200 yet;
  ready once the pod is ready;
- crashed when its container exited and the kubelet restarts it; failed
  when the kubelet has backed off FAILED_AFTER restarts in a row
  (`CrashLoopBackOff`) or cannot start the container at all (an image that
  cannot be pulled, a missing Secret): the detail says why, with the exit
  code and the termination message;
- stopping (not wanted) once the pod is being deleted: its worker drains.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fleet.kube.render import CONTAINER, GENERATION_LABEL, NAME_ANNOTATION

FAILED_AFTER = 3  # restarts in CrashLoopBackOff before the replica shows as failed
STARTING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})


@dataclass(frozen=True)
class PodReplica:
    pod: str
    deployment: str  # the deployment row's name
    generation: int
    state: str  # an InstanceState value
    wanted: bool
    restarts: int
    detail: str
    started_at: datetime | None
    crashed: bool  # its container has exited at least once: a log says why


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def exit_description(terminated: dict[str, Any]) -> str:
    """`exited with code 1 (Error): <first line of the termination message>`."""
    code, reason = terminated.get("exitCode"), terminated.get("reason") or ""
    text = f"exited with code {code}" + (f" ({reason})" if reason else "")
    lines = [line for line in (terminated.get("message") or "").splitlines() if line.strip()]
    return f"{text}: {lines[-1].strip()}" if lines else text


def _unscheduled(pod: dict[str, Any]) -> str:
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason', 'Unschedulable')}: {condition.get('message', '')}".strip()
    return "waiting for the cluster to schedule the pod"


def _container(pod: dict[str, Any]) -> dict[str, Any] | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return dict(status)
    return None


def _waiting(waiting: dict[str, Any], restarts: int, last: dict[str, Any]) -> tuple[str, str]:
    reason = waiting.get("reason") or "Waiting"
    if reason in STARTING_REASONS:
        return "starting", reason
    detail = f"{reason}: {exit_description(last) if last else waiting.get('message', '')}".rstrip(": ")
    if reason == "CrashLoopBackOff":
        if restarts >= FAILED_AFTER:
            return "failed", f"{detail}; crashed {restarts} times, the kubelet keeps retrying"
        return "crashed", f"{detail}; restarting"
    return "failed", detail  # ErrImagePull, CreateContainerConfigError, ...: a start cannot succeed


def pod_replica(pod: dict[str, Any]) -> PodReplica | None:
    """The replica row `pod` stands for; None for a pod of no deployment row (not ours)."""
    meta = pod.get("metadata", {})
    name = (meta.get("annotations") or {}).get(NAME_ANNOTATION)
    if not name:
        return None
    generation = int((meta.get("labels") or {}).get(GENERATION_LABEL, "0") or 0)
    status = _container(pod)
    restarts = int(status.get("restartCount", 0)) if status else 0
    last = (status or {}).get("lastState", {}).get("terminated") or {}
    state, detail, started = "pending", _unscheduled(pod), None
    if meta.get("deletionTimestamp"):
        state, detail = "stopping", "draining (the pod is being deleted)"
    elif status is not None:
        current = status.get("state") or {}
        if "running" in current:
            started = _time(current["running"].get("startedAt"))
            state = "ready" if status.get("ready") else "starting"
            detail = "" if status.get("ready") else "loading the model"
            if last and state == "starting":
                detail = f"restarted after it {exit_description(last)}"
        elif "waiting" in current:
            state, detail = _waiting(current["waiting"], restarts, last)
        elif "terminated" in current:
            state, detail = "crashed", exit_description(current["terminated"])
    return PodReplica(
        pod=meta.get("name", ""),
        deployment=name,
        generation=generation,
        state=state,
        wanted=not meta.get("deletionTimestamp"),
        restarts=restarts,
        detail=detail[:500],
        started_at=started,
        crashed=bool(last) or (status is not None and "terminated" in (status.get("state") or {})),
    )
