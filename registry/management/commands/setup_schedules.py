from typing import Any

from django.core.checks import Tags
from django.core.management.base import BaseCommand

from registry.tasks import ensure_schedules


class Command(BaseCommand):
    requires_system_checks = [Tags.models]  # no URL to serve: checking the URL conf imports every view
    help = "Create or update the django-q2 schedules (expiry, probes, sweeps); safe to run again."

    def handle(self, *args: Any, **options: Any) -> None:
        count = ensure_schedules()
        self.stdout.write(f"{count} schedule(s) in place.")
