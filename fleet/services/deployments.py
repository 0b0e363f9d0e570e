"""What an operator does to a deployment (admin and `manage.py deploy` both call these), and its command line.

Changing how replicas run (the model, backend or worker options) raises the
deployment's generation: the scheduler then replaces its replicas one at a
time. Changing only `replicas` or the placement scales without a restart.
"""

from __future__ import annotations

import shlex
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from fleet.models import Deployment, Instance, InstanceState

# The fields a running worker was started with: a change to one of them is a rolling restart.
WORKER_OPTIONS = (
    "role",
    "model_names",
    "model_path",
    "backend",
    "max_concurrency",
    "dtype",
    "threads",
    "max_model_len",
    "extra_args",
)
# runworker options the agent sets itself.
MANAGED_FLAGS = {
    "--model-path", "--model-names", "--backend", "--max-concurrency", "--dtype", "--threads",
    "--max-model-len", "--host", "--port", "--worker-id", "--worker-address", "--no-register",
    "--served-model-name", "--max-num-seqs", "--role",
}  # fmt: skip


def check_extra_args(extra_args: str) -> list[str]:
    """The extra runworker options as a list; ValidationError names what runworker would refuse."""
    from inference.management.commands.runworker import Command as RunWorker

    try:
        args = shlex.split(extra_args)
    except ValueError as exc:
        raise ValidationError(f"Extra options: {exc}.") from None
    managed = sorted({a.split("=", 1)[0] for a in args} & MANAGED_FLAGS)
    if managed:
        raise ValidationError(f"Extra options: {', '.join(managed)} is set by the deployment's own fields.")
    parser = RunWorker().create_parser("manage.py", "runworker")
    _, unknown = parser.parse_known_args(["--model-path", "x", *args])
    if unknown:
        raise ValidationError(f"Extra options: runworker does not take {' '.join(unknown)}.")
    return args


def worker_command(instance: Instance, *, port: int, host: str, address: str | None) -> list[str]:
    """The `runworker` command line of one instance (its --worker-id ties the process to the row)."""
    deployment = instance.deployment
    command = [
        sys.executable, str(settings.BASE_DIR / "manage.py"), "runworker",
        "--model-path", deployment.model_path,
        "--model-names", ",".join(deployment.served_names),
        "--backend", deployment.backend,
        "--role", deployment.role,
        "--max-concurrency", str(deployment.max_concurrency),
        "--dtype", deployment.dtype,
        "--host", host,
        "--port", str(port),
        "--worker-id", instance.identity,
    ]  # fmt: skip
    if deployment.threads:
        command += ["--threads", str(deployment.threads)]
    if deployment.max_model_len:
        command += ["--max-model-len", str(deployment.max_model_len)]
    if address:
        command += ["--worker-address", address]
    return command + shlex.split(deployment.extra_args)


def save_deployment(deployment: Deployment) -> Deployment:
    """Create or update; a change to a worker option raises the generation (a rolling restart)."""
    check_extra_args(deployment.extra_args)
    if deployment.pk is not None:
        before = Deployment.objects.filter(pk=deployment.pk).values(*WORKER_OPTIONS, "generation").first()
        if before and any(before[f] != getattr(deployment, f) for f in WORKER_OPTIONS):
            deployment.generation = before["generation"] + 1
    deployment.full_clean()
    deployment.save()
    return deployment


def create_deployment(**fields: Any) -> Deployment:
    return save_deployment(Deployment(**fields))


def scale(deployment: Deployment, replicas: int) -> None:
    Deployment.objects.filter(pk=deployment.pk).update(replicas=replicas, updated_at=timezone.now())
    deployment.replicas = replicas


@transaction.atomic
def restart(deployment: Deployment) -> None:
    """Replace every replica one at a time (failed ones too), with the same options."""
    row = Deployment.objects.select_for_update().get(pk=deployment.pk)
    row.generation += 1
    row.save(update_fields=["generation", "updated_at"])
    deployment.generation = row.generation


@dataclass(frozen=True)
class Summary:
    desired: int
    starting: int
    ready: int
    failed: int
    stopping: int

    def __str__(self) -> str:
        text = f"{self.ready}/{self.desired} ready"
        for count, word in (
            (self.starting, "starting"),
            (self.failed, "failed"),
            (self.stopping, "stopping"),
        ):
            if count:
                text += f", {count} {word}"
        return text


def summarize(deployment: Deployment, instances: list[Instance]) -> Summary:
    """Replica counts as the admin shows them, from the deployment's instances."""
    states = Counter(i.state if i.wanted else InstanceState.STOPPING for i in instances)
    starting = states[InstanceState.PENDING] + states[InstanceState.STARTING] + states[InstanceState.CRASHED]
    return Summary(
        deployment.replicas, starting, states[InstanceState.READY], states[InstanceState.FAILED],
        states[InstanceState.STOPPING],
    )  # fmt: skip
