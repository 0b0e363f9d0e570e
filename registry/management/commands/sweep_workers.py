from typing import Any

from django.core.management.base import BaseCommand

from registry.services.workers import expire_stale_workers


class Command(BaseCommand):
    help = "Mark workers whose heartbeat expired offline (what the scheduled task does), once."

    def handle(self, *args: Any, **options: Any) -> None:
        count = expire_stale_workers()
        self.stdout.write(f"{count} stale worker(s) marked offline.")
