"""Writes to teams (services, as HackSoft's guide has them): keyword-only, transactional."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from django.db import transaction

from registry.models import ServedModel
from teams.models import Team


@transaction.atomic
def create_team(
    *,
    name: str,
    daily_tokens: int | None = None,
    monthly_tokens: int | None = None,
    monthly_budget_usd: Decimal | None = None,
    model_names: Iterable[str] = (),
) -> Team:
    """A new team (all models unless `model_names` lists some); ValueError: a taken name, an unknown model."""
    if Team.objects.filter(name=name).exists():
        raise ValueError(f"A team is called {name!r} already.")
    names = [n for n in model_names if n]
    models = list(ServedModel.objects.filter(name__in=names))
    missing = sorted(set(names) - {m.name for m in models})
    if missing:
        raise ValueError(f"Unknown served model(s): {', '.join(missing)}")
    team = Team.objects.create(
        name=name,
        all_models=not names,
        daily_tokens=daily_tokens,
        monthly_tokens=monthly_tokens,
        monthly_budget_usd=monthly_budget_usd,
    )
    team.allowed_models.set(models)
    return team
