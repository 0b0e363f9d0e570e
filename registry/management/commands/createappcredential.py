"""Create an app credential for the signed API; the secret is printed this once."""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError, CommandParser

from audit.context import AuditedCommand
from registry.models import APP_ID_PATTERN, APP_ID_RULE, AppCredential
from registry.services.credentials import create_app_credential
from signing.sm2 import InvalidKey
from teams.models import Team


class Command(AuditedCommand):
    help = "Create an app id and secret for the go-infer compatible signed API."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--app-id", required=True)
        parser.add_argument("--secret", help="Use this secret instead of generating one.")
        parser.add_argument("--name", default="")
        parser.add_argument("--sm2-public-key", default="", help="Uncompressed SM2 public key in hex.")
        parser.add_argument("--allow-plain", action="store_true", help="Accept signType=plain.")
        parser.add_argument(
            "--pipeline", action="append", dest="pipelines", help="Allow only this pipeline (repeatable)."
        )
        parser.add_argument("--rpm", type=int, help="Requests per minute allowed.")
        parser.add_argument("--tpm", type=int, help="Tokens per minute (prompt + max_tokens reserved).")
        parser.add_argument("--max-in-flight", type=int, help="Requests allowed to run at once.")
        parser.add_argument("--team", default=None, help="The team whose budgets it spends.")

    def handle(self, *args: Any, **options: Any) -> None:
        for flag in ("rpm", "tpm", "max_in_flight"):
            if options[flag] is not None and options[flag] < 1:
                raise CommandError(f"--{flag.replace('_', '-')} must be a positive number.")
        app_id = options["app_id"]
        if not re.fullmatch(APP_ID_PATTERN, app_id):
            raise CommandError(f"an appId is {APP_ID_RULE}")
        if AppCredential.objects.filter(app_id=app_id).exists():
            raise CommandError(f"app id {app_id!r} already exists")
        team = None
        if options["team"] is not None:
            team = Team.objects.filter(name=options["team"]).first()
            if team is None:
                raise CommandError(f"No team is called {options['team']!r} (createteam makes one).")
        try:
            credential, secret = create_app_credential(
                team=team,
                app_id=app_id,
                secret=options["secret"],
                name=options["name"],
                sm2_public_key=options["sm2_public_key"],
                allow_plain=options["allow_plain"],
                allowed_pipelines=options["pipelines"],
                requests_per_minute=options["rpm"],
                tokens_per_minute=options["tpm"],
                max_in_flight=options["max_in_flight"],
            )
        except (InvalidKey, ValidationError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"appId:  {credential.app_id}")
        if options["secret"]:
            self.stdout.write("secret: (as given; stored encrypted)")
        else:
            self.stdout.write(f"secret: {secret}")
            self.stdout.write("Store the secret now: it is not shown again.")
