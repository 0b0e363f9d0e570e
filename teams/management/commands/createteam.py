"""`manage.py createteam NAME [--daily-tokens N] [--monthly-tokens N] [--monthly-budget USD] [--models]`."""

from __future__ import annotations

from argparse import ArgumentParser
from decimal import Decimal, InvalidOperation
from typing import Any

from django.core.management.base import CommandError

from audit.context import AuditedCommand
from teams.services import create_team


def _dollars(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CommandError(f"--monthly-budget must be dollars, like 25 or 12.50, not {text!r}.") from None
    if not value.is_finite() or value <= 0:
        raise CommandError("--monthly-budget must be a positive number of dollars.")
    return value.quantize(Decimal("0.01"))


class Command(AuditedCommand):
    help = "Create a team with budgets: tokens per UTC day and per month, dollars per month."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--daily-tokens", type=int, default=None, help="Tokens per UTC day.")
        parser.add_argument("--monthly-tokens", type=int, default=None, help="Tokens per calendar month.")
        parser.add_argument(
            "--monthly-budget", default=None, help="Dollars per month, from the served models' prices."
        )
        parser.add_argument("--models", default="", help="Comma-separated served models (default: all).")

    def handle(self, *args: Any, **options: Any) -> None:
        for flag in ("daily_tokens", "monthly_tokens"):
            if options[flag] is not None and options[flag] < 1:
                raise CommandError(f"--{flag.replace('_', '-')} must be a positive number.")
        budget = None if options["monthly_budget"] is None else _dollars(options["monthly_budget"])
        try:
            team = create_team(
                name=options["name"],
                daily_tokens=options["daily_tokens"],
                monthly_tokens=options["monthly_tokens"],
                monthly_budget_usd=budget,
                model_names=[m.strip() for m in options["models"].split(",") if m.strip()],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Created team '{team.name}' (id {team.id}).")
