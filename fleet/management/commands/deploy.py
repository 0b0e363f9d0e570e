"""`manage.py deploy`: create, scale, update, restart, stop and list deployments from a shell."""

from __future__ import annotations

import json
import time
from argparse import ArgumentParser
from typing import Any

from django.core.checks import Tags
from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from audit.context import AuditedCommand
from audit.services import recorded
from fleet.models import Backend, Deployment, Instance, InstanceState, Placement, RunsOn
from fleet.options import OptionError
from fleet.services import deployments, scheduler, served
from fleet.services.served import ServedFate

OPTION_FIELDS = (
    "role",
    "model_path",
    "model_names",
    "backend",
    "max_concurrency",
    "dtype",
    "threads",
    "max_model_len",
)


# Autoscaling's knobs: (flag, type, help); the field is the flag's name.
SCALING_OPTIONS = (
    ("--idle-seconds", int, "With --min-replicas 0: no request this long scales to zero (600)."),
    ("--target-queue-wait", float, "Seconds a queue may wait before replicas are added (1)."),
    (
        "--target-in-flight",
        float,
        "Share of the replicas' slots in flight above which replicas are added (0.8).",
    ),
    ("--scale-up-after", int, "Seconds of high load before adding replicas (15)."),
    ("--cooldown", int, "Seconds of low load before removing one (60)."),
    ("--priority", int, "Higher keeps its memory when a waiting model needs room (0)."),
    (
        "--cold-start-timeout",
        int,
        "Seconds a request waits for a cold model's first replica, then 503 (120).",
    ),
)


class Command(AuditedCommand):
    requires_system_checks = [Tags.models]  # no URL to serve: checking the URL conf imports every view
    help = "Manage deployments: create, update, scale, restart, stop, delete, list, wait, export."

    def add_arguments(self, parser: ArgumentParser) -> None:
        verbs = parser.add_subparsers(dest="verb", required=True)
        for verb in ("create", "update"):
            sub = verbs.add_parser(verb, help=f"{verb.title()} a deployment (update: a rolling restart).")
            sub.add_argument("name")
            sub.add_argument("--model-path", required=verb == "create")
            sub.add_argument("--model-names")
            sub.add_argument("--backend", choices=Backend.values)
            sub.add_argument("--role", choices=["both", "prefill", "decode"])
            sub.add_argument("--replicas", type=int, help="Fixed replicas (turns autoscaling off).")
            sub.add_argument("--min-replicas", type=int, help="Autoscale from this many (0: to zero)...")
            sub.add_argument("--max-replicas", type=int, help="...to this many.")
            for flag, kind, text in SCALING_OPTIONS:
                sub.add_argument(flag, type=kind, help=text)
            sub.add_argument("--max-concurrency", type=int)
            sub.add_argument("--dtype")
            sub.add_argument("--threads", type=int)
            sub.add_argument("--max-model-len", type=int)
            sub.add_argument("--extra-args", help="More runworker options, quoted: '--max-queue 128'.")
            sub.add_argument("--placement", choices=Placement.values)
            sub.add_argument("--runs-on", choices=RunsOn.values, help="agents (default) or kubernetes.")
            sub.add_argument("--labels", help="Node labels required, e.g. zone=a,gpu=a100.")
            sub.add_argument("--memory", type=int, help="Bytes per replica (default: estimated).")
            if verb == "create":
                sub.add_argument("--if-absent", action="store_true", help="Do nothing if it exists.")
        scale = verbs.add_parser("scale", help="Set the number of replicas (0 stops them all).")
        scale.add_argument("name")
        scale.add_argument("replicas", type=int)
        for verb, text in (
            ("restart", "Replace every replica, one at a time."),
            ("stop", "Scale to 0 (drains the workers)."),
        ):
            verbs.add_parser(verb, help=text).add_argument("name")
        delete = verbs.add_parser("delete", help="Stop and delete once no replica is left.")
        delete.add_argument("name")
        delete.add_argument(
            "--served-models", choices=ServedFate.values, default=ServedFate.DISABLE,
            help="What becomes of the served names nothing else serves: disable (default) or remove; "
            "either way their requests get 404.",
        )  # fmt: skip
        verbs.add_parser("list", help="Every deployment with its replicas, as JSON lines.")
        wait = verbs.add_parser("wait", help="Wait until every deployment has its replicas ready.")
        wait.add_argument("--timeout", type=float, default=300.0)
        export = verbs.add_parser("export", help="Print what a backend applies for a deployment (YAML).")
        export.add_argument("--k8s", metavar="NAME", required=True, help="The Kubernetes objects of NAME.")
        export.add_argument("--namespace", help="Default: KUBE_NAMESPACE.")
        export.add_argument("--image", help="The workers' image (default: KUBE_WORKER_IMAGE).")

    def handle(self, *args: Any, **options: Any) -> None:
        verb = options["verb"]
        if verb in ("create", "update"):
            self.save(options)
        elif verb == "list":
            self.list()
        elif verb == "wait":
            self.wait(options["timeout"])
        elif verb == "export":
            self.export(options)
        else:
            deployment = self.get(options["name"])
            with recorded("stop" if verb == "delete" else verb, deployment):
                if verb == "scale":
                    deployments.scale(deployment, options["replicas"])
                elif verb == "restart":
                    deployments.restart(deployment)
                elif verb in ("stop", "delete"):
                    deployments.scale(deployment, 0)
            scheduler.reconcile()
            if verb == "delete":
                self.delete(deployment, options["served_models"])
        if verb not in ("list", "wait", "delete", "export"):
            self.stdout.write(f"{options['name']}: {self.summary(self.get(options['name']))}")

    def get(self, name: str) -> Deployment:
        try:
            return Deployment.objects.get(name=name)
        except Deployment.DoesNotExist:
            raise CommandError(f"No deployment named {name!r}.") from None

    def save(self, options: dict[str, Any]) -> None:
        exists = Deployment.objects.filter(name=options["name"]).first()
        if options["verb"] == "create" and exists is not None:
            if options["if_absent"]:
                return
            raise CommandError(f"A deployment named {options['name']!r} exists: use `deploy update`.")
        deployment = exists or Deployment(name=options["name"])
        scaling = tuple(flag[2:].replace("-", "_") for flag, _, _ in SCALING_OPTIONS)
        for field in (
            *OPTION_FIELDS,
            "replicas",
            "placement",
            "runs_on",
            "extra_args",
            "min_replicas",
            "max_replicas",
            *scaling,
        ):
            if options.get(field) is not None:
                setattr(deployment, field, options[field])
        if options.get("replicas") is not None and options.get("min_replicas") is None:
            deployment.min_replicas = deployment.max_replicas = None  # fixed
        if options.get("labels") is not None:
            from fleet.management.commands.runagent import parse_labels

            deployment.required_labels = parse_labels(options["labels"])
        if options.get("memory") is not None:
            deployment.memory_per_replica = options["memory"]
        try:
            deployments.save_deployment(deployment)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        scheduler.reconcile()

    def export(self, options: dict[str, Any]) -> None:
        """The objects runkubeagent applies, replicas included (a GitOps tool has no scale calls)."""
        import yaml

        from fleet.kube.spec import cluster_config, desired_object

        deployment = self.get(options["k8s"])
        config = cluster_config(namespace=options["namespace"], image=options["image"])
        try:
            rendered = desired_object(deployment, config, replicas=deployment.replicas)
        except OptionError as exc:
            raise CommandError(f"{deployment.name}: {exc}") from None
        self.stdout.write(yaml.safe_dump(rendered, sort_keys=False), ending="")

    def summary(self, deployment: Deployment) -> str:
        summary = deployments.summarize(deployment, list(deployment.instances.all()))
        return f"{summary}" + (f" ({deployment.pending_reason})" if deployment.pending_reason else "")

    def list(self) -> None:
        for deployment in Deployment.objects.prefetch_related("instances"):
            summary = deployments.summarize(deployment, list(deployment.instances.all()))
            row = {"name": deployment.name, "model_path": deployment.model_path, **summary.__dict__}
            row |= {"min_replicas": deployment.min_replicas, "max_replicas": deployment.max_replicas}
            self.stdout.write(json.dumps(row | {"pending_reason": deployment.pending_reason}))

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            waiting = [
                d for d in Deployment.objects.prefetch_related("instances")
                if deployments.summarize(d, list(d.instances.all())).ready < d.replicas
            ]  # fmt: skip
            if not waiting:
                return
            failed = Instance.objects.filter(deployment__in=waiting, state=InstanceState.FAILED).first()
            if failed is not None:
                raise CommandError(f"{failed.identity} failed: {failed.detail}\n{failed.log_tail}")
            if time.monotonic() > deadline:
                raise CommandError("Not ready: " + "; ".join(f"{d.name} {self.summary(d)}" for d in waiting))
            time.sleep(1)

    def delete(self, deployment: Deployment, fate: str) -> None:
        deadline = time.monotonic() + 120
        while deployment.instances.exists():
            if time.monotonic() > deadline:
                raise CommandError(f"{deployment.name} still has replicas stopping; is its node's agent up?")
            time.sleep(1)
        names = served.delete_deployments([deployment], fate=fate)
        done = f"; served model(s) {', '.join(names)} {fate}d" if names else ""
        self.stdout.write(f"{deployment.name}: deleted{done}")
