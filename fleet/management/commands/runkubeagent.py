"""`manage.py runkubeagent`: realise the deployments that run on Kubernetes (see fleet.kube.agent)."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.checks import Tags
from django.core.management.base import BaseCommand

from fleet.kube.agent import KubeAgent, KubeAgentOptions
from fleet.kube.backend import KubeApi, api_client
from fleet.kube.spec import cluster_config


class Command(BaseCommand):
    # The models' checks only: an agent serves no Django URL (checking the URL conf imports every view).
    requires_system_checks = [Tags.models]
    help = "Realise the deployments that run on Kubernetes as Deployments of one namespace, and watch them."

    def add_arguments(self, parser: ArgumentParser) -> None:
        add = parser.add_argument
        add("--namespace", default=None, help="Where the workers run (default: KUBE_NAMESPACE).")
        add("--kubeconfig", default=None, help="A kubeconfig file (default: in a pod, its ServiceAccount).")
        add("--context", default=None, help="The kubeconfig's context (default: its current one).")
        add("--image", default=None, help="The workers' image (default: KUBE_WORKER_IMAGE).")
        add("--interval", type=float, default=2.0, help="Seconds between ticks (a pod change wakes it).")
        add("--lease", type=float, default=15.0, help="Seconds another agent waits before taking over.")

    def handle(self, *args: Any, **options: Any) -> None:
        config = cluster_config(namespace=options["namespace"], image=options["image"])
        connection = api_client(kubeconfig=options["kubeconfig"], context=options["context"])
        api = KubeApi(connection, config.namespace)
        agent_options = KubeAgentOptions(
            interval=options["interval"],
            lease_seconds=options["lease"],
            heartbeat_interval=settings.HEARTBEAT_INTERVAL,
        )
        self.stdout.write(f"KUBE AGENT READY {config.namespace}")
        self.stdout.flush()
        KubeAgent(api, config, agent_options).run()
