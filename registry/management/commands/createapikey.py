"""`manage.py createapikey --name NAME [--team T] [--all-models | --models a,b] [...]`: its secret, once."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.checks import Tags
from django.core.management.base import CommandError

from audit.context import AuditedCommand
from registry.services.keys import create_api_key
from teams.models import Team


class Command(AuditedCommand):
    requires_system_checks = [Tags.models]  # no URL to serve: checking the URL conf imports every view
    help = "Create an API key for the OpenAI-compatible API; the secret is printed once, as the last line."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--name", required=True)
        scope = parser.add_mutually_exclusive_group()
        scope.add_argument(
            "--all-models", action="store_true", help="Every model, present and future (the default)."
        )
        scope.add_argument("--models", default="", help="Comma-separated served models, and no other.")
        parser.add_argument("--expires", type=float, default=None, help="Days until it expires.")
        parser.add_argument("--rpm", type=int, default=None, help="Requests per minute.")
        parser.add_argument("--tpm", type=int, default=None, help="Tokens per minute.")
        parser.add_argument("--max-in-flight", type=int, default=None, help="Requests running at once.")
        parser.add_argument("--team", default=None, help="The team whose budgets and models it shares.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["expires"] is not None and options["expires"] <= 0:
            raise CommandError("--expires must be a positive number of days.")
        for flag in ("rpm", "tpm", "max_in_flight"):
            if options[flag] is not None and options[flag] < 1:
                raise CommandError(f"--{flag.replace('_', '-')} must be a positive number.")
        names = [m.strip() for m in options["models"].split(",") if m.strip()]
        if options["models"] and not names:
            raise CommandError("--models names no model; use --all-models for every model.")
        team = None
        if options["team"] is not None:
            team = Team.objects.filter(name=options["team"]).first()
            if team is None:
                raise CommandError(f"No team is called {options['team']!r} (createteam makes one).")
        try:
            key, secret = create_api_key(
                team=team,
                name=options["name"],
                model_names=names,
                all_models=not names,
                expires_in_days=options["expires"],
                requests_per_minute=options["rpm"],
                tokens_per_minute=options["tpm"],
                max_in_flight=options["max_in_flight"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        expiry = key.expires_at.isoformat() if key.expires_at else "never"
        scope = "all models" if key.all_models else ", ".join(names)
        self.stderr.write(f"Created API key '{key.name}' (prefix {key.prefix}, {scope}, expires {expiry}).")
        self.stderr.write("Store the secret now: it is not stored and cannot be shown again.")
        self.stdout.write(secret)
