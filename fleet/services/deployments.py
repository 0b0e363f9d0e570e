"""What an operator does to a deployment (admin and `manage.py deploy` both call these), and its command line.

Changing how replicas run (the model, backend or worker options) raises the
deployment's generation: the scheduler then replaces its replicas one at a
time. Changing only `replicas` or the placement scales without a restart.
An autoscaled deployment (min and max replicas) starts with max(min, 1)
replicas, so that its model loads once and its names are served; the
scheduler sizes it from then on.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone

from fleet import options
from fleet.models import Deployment, Instance, InstanceState, Node
from fleet.options import OptionError, parse_extra_options
from fleet.services import served

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


def check_extra_args(extra_args: str) -> list[str]:
    """The extra runworker options as `--flag=value` elements; ValidationError names what is refused."""
    from inference.management.commands.runworker import Command as RunWorker

    try:
        options = parse_extra_options(extra_args)
    except OptionError as exc:
        raise ValidationError({"extra_args": f"Extra options: {exc}"}) from None
    # runworker's own parser (no abbreviations) checks the values: a type, a choice.
    parser = RunWorker().create_parser("manage.py", "runworker")
    try:
        parser.parse_args(["--model-path=x", *options])
    except CommandError as exc:
        raise ValidationError({"extra_args": f"Extra options: {str(exc).removeprefix('Error: ')}."}) from None
    return options


def check_model_path(deployment: Deployment) -> None:
    """Refuse a model path that no node catalogues and no allowed hub organisation publishes."""
    catalogues = Node.objects.values_list("catalogue", flat=True)
    known = {
        str(entry.get("path")) for catalogue in catalogues for entry in catalogue if isinstance(entry, dict)
    }
    try:
        options.check_model_path(
            deployment.model_path,
            backend=deployment.backend,
            catalogue=known,
            hub_orgs=settings.FLEET_HUB_ORGS,
        )
    except OptionError as exc:
        raise ValidationError({"model_path": str(exc)}) from None


def worker_command(instance: Instance, *, port: int, host: str, address: str | None) -> list[str]:
    """The `runworker` command line of one instance (its --worker-id ties the process to the row).

    Every option is one `--flag=value` element, from the allow-list (`fleet.options`).
    """
    deployment = instance.deployment
    fields = [*options.deployment_fields(deployment), ("--host", host), ("--port", port)]
    fields.append(("--worker-id", instance.identity))
    if address:
        fields.append(("--worker-address", address))
    extra = parse_extra_options(deployment.extra_args)
    return [*worker_prefix(), *(options.option(flag, value) for flag, value in fields), *extra]


def worker_prefix() -> list[str]:
    """What every worker's argv starts with: this Python, this project's manage.py, runworker."""
    return [sys.executable, str(settings.BASE_DIR / "manage.py"), "runworker"]


def save_deployment(deployment: Deployment) -> Deployment:
    """Create or update; a change to a worker option raises the generation (a rolling restart)."""
    deployment.full_clean()
    check_extra_args(deployment.extra_args)
    check_model_path(deployment)
    created = deployment.pk is None
    if not created:
        before = Deployment.objects.filter(pk=deployment.pk).values(*WORKER_OPTIONS, "generation").first()
        if before and any(before[f] != getattr(deployment, f) for f in WORKER_OPTIONS):
            deployment.generation = before["generation"] + 1
    elif deployment.autoscaled:
        deployment.replicas = min(max(deployment.min_replicas or 0, 1), deployment.max_replicas or 1)
    deployment.save()
    if created:
        served.enable_served_names(deployment)
    return deployment


def create_deployment(**fields: Any) -> Deployment:
    return save_deployment(Deployment(**fields))


def scale(deployment: Deployment, replicas: int) -> None:
    """A fixed number of replicas: autoscaling, if it was on, is off."""
    Deployment.objects.filter(pk=deployment.pk).update(
        replicas=replicas, min_replicas=None, max_replicas=None, updated_at=timezone.now()
    )
    deployment.replicas, deployment.min_replicas, deployment.max_replicas = replicas, None, None


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
