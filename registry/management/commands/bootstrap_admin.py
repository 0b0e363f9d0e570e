"""Create the first admin user on an empty database and print its password once."""

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.checks import Tags
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    requires_system_checks = [Tags.models]  # no URL to serve: checking the URL conf imports every view
    help = "Create an 'admin' superuser with a random password if no superuser exists yet."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, username: str, **options: Any) -> None:
        user_model = get_user_model()
        if user_model.objects.filter(is_superuser=True).exists():
            self.stdout.write("An admin user exists already; its password is not shown again.")
            return
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(f"Admin user (shown once): {username} / {password}")
