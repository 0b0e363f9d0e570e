"""`manage.py runagent`: this machine's node agent (see fleet.agent.agent)."""

from __future__ import annotations

import socket
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import Tags
from django.core.management.base import BaseCommand, CommandError

from fleet.agent.agent import Agent, AgentOptions


def parse_labels(text: str) -> dict[str, str]:
    labels = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CommandError(f"--labels takes key=value pairs separated by commas, not {pair!r}.")
        labels[key.strip()] = value.strip()
    return labels


class Command(BaseCommand):
    # The models' checks only: an agent serves no Django URL (checking the URL conf imports every view).
    requires_system_checks = [Tags.models]
    help = "Run this machine's node agent: start, watch and restart the workers deployments place here."

    def add_arguments(self, parser: ArgumentParser) -> None:
        add = parser.add_argument
        add("--name", default=socket.gethostname(), help="Node name (default: the host name).")
        add(
            "--address",
            default="127.0.0.1",
            help="Host the portals reach this node's workers at; not loopback: workers bind --worker-host.",
        )
        add("--worker-host", default=None, help="Address workers bind (default: 127.0.0.1, or 0.0.0.0).")
        add("--labels", default="", help="Node labels, e.g. zone=a,gpu=a100.")
        add("--model-dirs", default=None, help="Comma-separated folders to list models from (MODEL_DIRS).")
        add("--interval", type=float, default=2.0, help="Seconds between ticks.")
        add(
            "--restart-backoff",
            type=float,
            default=1.0,
            help="Seconds before a crashed worker starts again, doubled per crash in a row (up to 60).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        loopback = options["address"] in ("127.0.0.1", "localhost")
        worker_host = options["worker_host"] or ("127.0.0.1" if loopback else "0.0.0.0")
        if not loopback and worker_host in ("127.0.0.1", "localhost"):
            raise CommandError("--worker-host must not be loopback when --address is another host.")
        if worker_host not in ("127.0.0.1", "localhost") and not settings.WORKER_TOKEN:
            raise CommandError(
                f"Workers on {worker_host} need WORKER_TOKEN set: they would be open model servers."
            )
        model_dirs = (
            settings.MODEL_DIRS if options["model_dirs"] is None else options["model_dirs"].split(",")
        )
        agent_options = AgentOptions(
            name=options["name"],
            address=options["address"],
            worker_host=worker_host,
            labels=parse_labels(options["labels"]),
            model_dirs=[d for d in model_dirs if d.strip()],
            log_dir=Path(settings.LOG_DIR) / "instances",
            interval=options["interval"],
            restart_backoff=options["restart_backoff"],
            drain_timeout=settings.WORKER_DRAIN_TIMEOUT,
            heartbeat_interval=settings.HEARTBEAT_INTERVAL,
            llamacpp_build_dir=settings.LLAMACPP_BUILD_DIR if settings.LLAMACPP_NATIVE != "off" else None,
            llamacpp_native_forced=settings.LLAMACPP_NATIVE == "on",
        )
        self.stdout.write(f"AGENT READY {agent_options.name}", ending="\n")
        self.stdout.flush()
        Agent(agent_options).run()
