"""Budgets as the limiter reads them: who (`subject`), named how (`label`), and each limit (None: off).

A key's snapshot carries its own budget and its team's; a chat user's
carries their team's. Money is counted in micro-dollars (an integer in the
limiter's counters): a price per million tokens in dollars is the price of
one token in micro-dollars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from channels.db import database_sync_to_async

from registry.services.request_log import log_days
from teams.models import Team

MICRO = 1_000_000


@dataclass(frozen=True)
class BudgetLimits:
    """One subject's budgets: tokens per UTC day and per calendar month, micro-dollars per month."""

    subject: str  # "team:3" or "key:12": the limiter's counters
    label: str  # "team 'research'": what a refusal names
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    microusd_per_month: int | None = None

    @property
    def on(self) -> bool:
        return bool(self.tokens_per_day or self.tokens_per_month or self.microusd_per_month)

    def share(self, portals: int) -> BudgetLimits:
        """One of `portals` portals' part of each budget that is on (at least 1)."""

        def part(limit: int | None) -> int | None:
            return max(1, limit // portals) if limit else limit

        return BudgetLimits(
            self.subject,
            self.label,
            part(self.tokens_per_day),
            part(self.tokens_per_month),
            part(self.microusd_per_month),
        )


def microusd(dollars: Decimal | None) -> int | None:
    return None if dollars is None else int(dollars * MICRO)


def price_microusd(
    prompt_tokens: int, completion_tokens: int, input_price: float, output_price: float
) -> int:
    """What tokens cost in micro-dollars (rounded up), from prices in dollars per million tokens."""
    return math.ceil(round(prompt_tokens * input_price + completion_tokens * output_price, 6))


def budget_of(
    *, subject: str, label: str, daily: int | None, monthly: int | None, usd: Decimal | None
) -> tuple[BudgetLimits, ...]:
    limits = BudgetLimits(subject, label, daily or None, monthly or None, microusd(usd) or None)
    return (limits,) if limits.on else ()


def team_budget(team: Team | None) -> tuple[BudgetLimits, ...]:
    """The team's budgets (none when it has none, or there is no team)."""
    if team is None:
        return ()
    return budget_of(
        subject=f"team:{team.id}",
        label=f"team '{team.name}'",
        daily=team.daily_tokens,
        monthly=team.monthly_tokens,
        usd=team.monthly_budget_usd,
    )


def team_model_ids(team: Team | None) -> frozenset[int] | None:
    """The models the team may use; None: every model (or no team)."""
    if team is None or team.all_models:
        return None
    return frozenset(team.allowed_models.values_list("id", flat=True))


@dataclass(frozen=True)
class MemberTeam:
    """The team a user's chats spend: its id, its budgets and the models it may use."""

    team_id: int | None = None
    budgets: tuple[BudgetLimits, ...] = ()
    allowed_model_ids: frozenset[int] | None = None
    log_days: int = 0  # the team's request log: days its chats' bodies are kept; 0: not kept


def get_member_team(*, user_id: int) -> MemberTeam:
    """The user's team (the first by name when they belong to several); an empty one when none."""
    team = Team.objects.filter(members__id=user_id).order_by("name").first()
    if team is None:
        return MemberTeam()
    return MemberTeam(
        team_id=team.id,
        budgets=team_budget(team),
        allowed_model_ids=team_model_ids(team),
        log_days=log_days(team),
    )


aget_member_team = database_sync_to_async(get_member_team)


def narrow(own: frozenset[int] | None, team: frozenset[int] | None) -> frozenset[int] | None:
    """The models both scopes allow (None: every model)."""
    if own is None:
        return team
    return own if team is None else own & team
