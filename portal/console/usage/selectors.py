"""The usage page's figures: the daily rollup, plus raw records for the days not rolled up yet.

Every figure is a grouped query over the rollups added to the same query over
the raw records of days the roll-up has not reached (today, and any day before
it the job has not run for), so the page costs the same number of queries at a
thousand records or a million. Totals and the per-model series read
`UsageDailyTotal` (one row per day, source and model) unless the page is
filtered to one key, app or user; the top tables read `UsageDaily` through
indexes that hold the day, the group and its figures, so no row is read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDate

from portal.console.usage.forms import UsageFilters
from registry.models import (
    ApiKey,
    AppCredential,
    ServedModel,
    UsageDaily,
    UsageDailyTotal,
    UsageRecord,
    UsageRollupDay,
)
from registry.services.rollups import COUNTS, day_bounds, usage_aggregates
from teams.models import Team

TOP = 10
SUGGESTIONS = 200  # per filter: a datalist, not a directory of every key
# The rollup's leaders fetched per top table: more than TOP, so that few
# groups outside them can still reach the top with today's raw records.
LEADERS = 100
# Stacked charts show the busiest models and fold the rest into one series.
MAX_SERIES = 8
OTHER = "(other models)"
DIMENSIONS = {
    "teams": "team_id",
    "keys": "api_key_id",
    "apps": "app_credential_id",
    "users": "user_id",
    "models": "model_name",
}


def unrolled_days(filters: UsageFilters) -> list[date]:
    """The days in range that `UsageDaily` does not hold yet: they are read raw."""
    rolled = set(
        UsageRollupDay.objects.filter(day__gte=filters.start, day__lte=filters.end).values_list(
            "day", flat=True
        )
    )
    return [day for day in filters.days if day not in rolled]


def rollup_rows(filters: UsageFilters) -> QuerySet[UsageDaily]:
    return UsageDaily.objects.filter(filters.q(), day__gte=filters.start, day__lte=filters.end).order_by()


def total_rows(filters: UsageFilters) -> QuerySet[UsageDaily] | QuerySet[UsageDailyTotal]:
    """The rollup rows that sum to the filtered totals: per model, unless filtered to one caller or team."""
    one = (filters.api_key_id, filters.app_credential_id, filters.user_id, filters.team_id)
    if all(f is None for f in one):
        return UsageDailyTotal.objects.filter(
            filters.q(), day__gte=filters.start, day__lte=filters.end
        ).order_by()
    return rollup_rows(filters)


def raw_rows(filters: UsageFilters, days: Iterable[date]) -> QuerySet[UsageRecord]:
    """Raw records of `days`, one created_at range per run of consecutive days."""
    spans = Q()
    for first, last in _runs(sorted(days)):
        spans |= Q(created_at__gte=day_bounds(first)[0], created_at__lt=day_bounds(last)[1])
    if not spans:
        return UsageRecord.objects.none()
    return UsageRecord.objects.filter(spans, filters.q()).order_by()


def _runs(days: list[date]) -> Iterable[tuple[date, date]]:
    if not days:
        return
    first = last = days[0]
    for day in days[1:]:
        if day != last + timedelta(days=1):
            yield first, last
            first = day
        last = day
    yield first, last


def usage_charts(filters: UsageFilters) -> dict[str, Any]:
    """Totals, the per-day series by model, and the top keys, apps, users and models."""
    rolled, raw = rollup_rows(filters), raw_rows(filters, unrolled_days(filters))
    cells = _by_day_and_model(total_rows(filters), raw)  # the totals, the series and the models
    top = {
        name: _top(field, filters.rank, rolled, raw) for name, field in DIMENSIONS.items() if name != "models"
    }
    return {
        "totals": _totals(cells.values()),
        "daily": _daily(filters, cells),
        "top": {**top, "models": _top_models(cells, filters.rank)},
    }


def _by_day_and_model(
    rolled: QuerySet[UsageDaily] | QuerySet[UsageDailyTotal], raw: QuerySet[UsageRecord]
) -> dict[tuple, dict[str, int]]:
    """Every counter per (day, model), from the rollup and the raw records together."""
    cells: dict[tuple, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTS, 0))
    sums: Any = rolled.values("day", "model_name").annotate(**{c: Sum(c) for c in COUNTS})
    live: Any = (
        raw.annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day", "model_name")
        .annotate(**usage_aggregates())
    )
    for rows in (sums, live):
        for row in rows:
            cell = cells[row["day"], row["model_name"]]
            for name in COUNTS:
                cell[name] += row[name] or 0
    return cells


def _totals(cells: Iterable[dict[str, int]]) -> dict[str, Any]:
    totals: dict[str, Any] = dict.fromkeys(COUNTS, 0)
    for cell in cells:
        for name in COUNTS:
            totals[name] += cell[name]
    totals["tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
    totals["avg_ttft_ms"] = totals["ttft_ms_sum"] / totals["ttft_count"] if totals["ttft_count"] else None
    totals["avg_total_time_ms"] = (
        totals["total_time_ms_sum"] / totals["total_time_count"] if totals["total_time_count"] else None
    )
    return totals


def _daily(filters: UsageFilters, cells: dict[tuple, dict[str, int]]) -> dict[str, Any]:
    """Requests and tokens per day, one series per model (the busiest MAX_SERIES, then the rest)."""
    busiest: dict[str, int] = defaultdict(int)
    for (_, model), cell in cells.items():
        busiest[model] += cell["requests"]
    ranked = sorted(busiest, key=lambda model: (-busiest[model], model))
    shown = ranked if len(ranked) <= MAX_SERIES else ranked[: MAX_SERIES - 1]
    index = {day: n for n, day in enumerate(filters.days)}
    series = {model: ([0] * len(index), [0] * len(index)) for model in [*shown, OTHER]}
    for (day, model), cell in cells.items():
        requests_row, tokens_row = series[model if model in shown else OTHER]
        requests_row[index[day]] += cell["requests"]
        tokens_row[index[day]] += cell["prompt_tokens"] + cell["completion_tokens"]
    if not any(series[OTHER][0]) and not any(series[OTHER][1]):
        del series[OTHER]
    return {
        "days": [day.isoformat() for day in filters.days],
        "requests": [{"label": model, "data": rows[0]} for model, rows in series.items()],
        "tokens": [{"label": model, "data": rows[1]} for model, rows in series.items()],
    }


def _top_models(cells: dict[tuple, dict[str, int]], rank: str) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, int]] = defaultdict(lambda: {"requests": 0, "prompt": 0, "completion": 0})
    for (_, model), cell in cells.items():
        figures = merged[model]
        figures["requests"] += cell["requests"]
        figures["prompt"] += cell["prompt_tokens"]
        figures["completion"] += cell["completion_tokens"]
    for figures in merged.values():
        figures["tokens"] = figures["prompt"] + figures["completion"]
    ranked = sorted(merged.items(), key=lambda item: (-item[1][rank], item[0]))[:TOP]
    return [{"id": model, "label": model, **figures} for model, figures in ranked]


def _top(
    field: str, rank: str, rolled: QuerySet[UsageDaily], raw: QuerySet[UsageRecord]
) -> list[dict[str, Any]]:
    """The TOP groups of one dimension by requests or tokens, each with its label and figures.

    The rollup is ranked in SQL, so only LEADERS rows leave the database however
    many keys there are. That is exact: a group outside the leaders has at most
    the last leader's rolled figure, so with today's raw records it can only
    reach the top if that ceiling plus its raw figure reaches the TOP-th best
    leader. Those few candidates get their rolled figures looked up.
    """
    tokens = {"prompt": Sum("prompt_tokens"), "completion": Sum("completion_tokens")}
    known = {f"{field}__isnull": False}
    rolled_groups = rolled.filter(**known).values(field).annotate(requests=Sum("requests"), **tokens)
    order = "-requests" if rank == "requests" else "-tokens"
    ranked_groups = rolled_groups.annotate(tokens=F("prompt") + F("completion")).order_by(order, field)
    leaders = list(ranked_groups[:LEADERS])
    raw_groups = raw.filter(**known).values(field).annotate(requests=Count("id"), **tokens)
    live = {row[field]: row for row in raw_groups}

    def figure(row: dict[str, Any]) -> int:
        return row["requests"] if rank == "requests" else (row["prompt"] or 0) + (row["completion"] or 0)

    merged: dict[Any, dict[str, int]] = defaultdict(lambda: {"requests": 0, "prompt": 0, "completion": 0})
    for row in [*leaders, *(live[row[field]] for row in leaders if row[field] in live)]:
        _add(merged[row[field]], row)
    others = set(live) - set(merged)
    if len(leaders) == LEADERS:  # else the rollup has no group beyond the leaders
        ceiling = figure(leaders[-1])
        best = sorted((figure(figures) for figures in merged.values()), reverse=True)
        floor = best[TOP - 1] if len(best) >= TOP else 0
        others = {group for group in others if figure(live[group]) + ceiling >= floor}
        for row in rolled_groups.filter(**{f"{field}__in": others}):
            _add(merged[row[field]], row)
    for group in others:
        _add(merged[group], live[group])
    for figures in merged.values():
        figures["tokens"] = figures["prompt"] + figures["completion"]
    # Ties go by the group's own value (a number for ids: "10" must not sort before "9").
    ranked = sorted(merged.items(), key=lambda item: (-item[1][rank], item[0]))[:TOP]
    labels = _labels(field, [group for group, _ in ranked])
    return [{"id": group, "label": labels[group], **figures} for group, figures in ranked]


def _add(figures: dict[str, int], row: dict[str, Any]) -> None:
    for name in ("requests", "prompt", "completion"):
        figures[name] += row[name] or 0


def _labels(field: str, groups: list[Any]) -> dict[Any, str]:
    """Readable names for the groups; a deleted key, app or user keeps its id."""
    if field == "model_name":
        return {group: group for group in groups}
    found: dict[Any, str] = {}
    if field == "api_key_id":
        for key in ApiKey.objects.filter(pk__in=groups).only("name", "prefix"):
            found[key.pk] = f"{key.name} ({key.prefix})"
    elif field == "app_credential_id":
        found = dict(AppCredential.objects.filter(pk__in=groups).values_list("pk", "app_id"))
    elif field == "team_id":
        found = dict(Team.objects.filter(pk__in=groups).values_list("pk", "name"))
    else:
        users = get_user_model()._default_manager.filter(pk__in=groups)
        found = {user.pk: user.get_username() for user in users}
    return {group: found.get(group, f"#{group} (deleted)") for group in groups}


def _model_names() -> list[str]:
    """The served models, and the names that usage was recorded under (a model since removed too)."""
    served = ServedModel.objects.order_by().values_list("name", flat=True)
    used = UsageDailyTotal.objects.order_by().values_list("model_name", flat=True)
    return list(served.union(used).order_by("name")[:SUGGESTIONS])  # one query; UNION drops repeats


def filter_choices(*, team_id: int | None = None) -> dict[str, list[tuple[str, str]]]:
    """What each filter suggests, as (value, label): the models, and the keys, apps, users and teams
    (the most recently used first, SUGGESTIONS of each). A team's viewer is offered its own rows only.
    """
    keys = ApiKey.objects.order_by(F("last_used_at").desc(nulls_last=True), "name")
    apps = AppCredential.objects.order_by(F("last_used_at").desc(nulls_last=True), "app_id")
    users = get_user_model().objects.order_by(F("last_login").desc(nulls_last=True), "username")
    teams = Team.objects.order_by("name")
    if team_id is not None:
        keys, apps = keys.filter(team_id=team_id), apps.filter(team_id=team_id)
        users, teams = users.filter(teams__id=team_id), teams.filter(pk=team_id)
    return {
        "models": [(name, "") for name in _model_names()],
        "keys": list(keys.values_list("prefix", "name")[:SUGGESTIONS]),
        "apps": list(apps.values_list("app_id", "name")[:SUGGESTIONS]),
        "users": [(name, "") for name in users.values_list("username", flat=True)[:SUGGESTIONS]],
        "teams": [(name, "") for name in teams.values_list("name", flat=True)[:SUGGESTIONS]],
    }
