"""The dashboard's teams: each team's requests, tokens and spend today and this month, beside its budgets.

Read like the usage page (`portal/console/usage/selectors.py`): the daily
rollup for the days it holds, raw records for the days it does not, so a
snapshot costs the same few queries whatever the traffic. Spend is priced
at the served models' prices now (the price table in the admin), as the
money budgets count it. Which teams a user sees: `teams.scoping.usage_scope`.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC
from decimal import Decimal
from typing import Any

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate

from portal.console.usage.forms import UsageFilters
from portal.console.usage.selectors import raw_rows, rollup_rows, unrolled_days
from registry.models import ServedModel
from registry.services.rollups import utc_today
from teams.models import Team
from teams.scoping import UsageScope

MILLION = Decimal(1_000_000)


def _cells(filters: UsageFilters) -> list[dict[str, Any]]:
    """Per team, model and day: requests, prompt and completion tokens (rollup plus raw records)."""
    group = ("team_id", "model_name", "day")
    figures = {"prompt": Sum("prompt_tokens"), "completion": Sum("completion_tokens")}
    rolled = rollup_rows(filters).filter(team_id__isnull=False).values(*group)
    raw = (
        raw_rows(filters, unrolled_days(filters))
        .filter(team_id__isnull=False)
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values(*group)
    )
    return [
        *rolled.annotate(requests=Sum("requests"), **figures),
        *raw.annotate(requests=Count("id"), **figures),
    ]


def _share(used: float, budget: Any) -> float | None:
    return None if not budget else round(float(used) / float(budget), 3)


def team_rows(scope: UsageScope) -> list[dict[str, Any]]:
    """Each team `scope` covers: today's and this month's figures, its budgets and the share of each used."""
    if not scope.allowed:
        return []
    today = utc_today()
    filters = UsageFilters(start=today.replace(day=1), end=today, team_id=scope.team_id)
    prices = {
        name: (inp, out)
        for name, inp, out in ServedModel.objects.values_list(
            "name", "input_price_per_million", "output_price_per_million"
        )
    }
    totals: dict[int, dict[str, Any]] = defaultdict(
        lambda: {
            "requests_today": 0,
            "tokens_today": 0,
            "requests_month": 0,
            "tokens_month": 0,
            "spend": Decimal(0),
        }
    )
    for cell in _cells(filters):
        figures, tokens = totals[cell["team_id"]], (cell["prompt"] or 0) + (cell["completion"] or 0)
        if cell["day"] == today:
            figures["requests_today"] += cell["requests"]
            figures["tokens_today"] += tokens
        figures["requests_month"] += cell["requests"]
        figures["tokens_month"] += tokens
        inp, out = prices.get(cell["model_name"], (Decimal(0), Decimal(0)))
        figures["spend"] += ((cell["prompt"] or 0) * inp + (cell["completion"] or 0) * out) / MILLION
    teams = Team.objects.order_by("name")
    if scope.team_id is not None:
        teams = teams.filter(pk=scope.team_id)
    return [_row(team, totals[team.pk]) for team in teams]


def _row(team: Team, figures: dict[str, Any]) -> dict[str, Any]:
    spend = figures.pop("spend")
    budget = team.monthly_budget_usd
    return {
        "id": team.pk,
        "name": team.name,
        **figures,
        "spend_month_usd": float(round(spend, 4)),
        "daily_tokens": team.daily_tokens,
        "monthly_tokens": team.monthly_tokens,
        "monthly_budget_usd": None if budget is None else float(budget),
        "daily_tokens_used": _share(figures["tokens_today"], team.daily_tokens),
        "monthly_tokens_used": _share(figures["tokens_month"], team.monthly_tokens),
        "monthly_budget_used": _share(spend, budget),
        "request_log_days": team.log_days or None,
    }
