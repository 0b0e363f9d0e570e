"""`manage.py createapikey --name NAME [--models a,b] [--expires DAYS]`: print a new key's secret once."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from registry.services.keys import create_api_key


class Command(BaseCommand):
    help = "Create an API key for the OpenAI-compatible API; the secret is printed once, as the last line."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument("--models", default="", help="Comma-separated served models (default: all).")
        parser.add_argument("--expires", type=float, default=None, help="Days until it expires.")
        parser.add_argument("--rpm", type=int, default=None, help="Requests per minute.")
        parser.add_argument("--tpm", type=int, default=None, help="Tokens per minute.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["expires"] is not None and options["expires"] <= 0:
            raise CommandError("--expires must be a positive number of days.")
        try:
            key, secret = create_api_key(
                name=options["name"],
                model_names=[m.strip() for m in options["models"].split(",")],
                expires_in_days=options["expires"],
                requests_per_minute=options["rpm"],
                tokens_per_minute=options["tpm"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        expiry = key.expires_at.isoformat() if key.expires_at else "never"
        self.stderr.write(f"Created API key '{key.name}' (prefix {key.prefix}, expires {expiry}).")
        self.stderr.write("Store the secret now: it is not stored and cannot be shown again.")
        self.stdout.write(secret)
