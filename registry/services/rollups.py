"""Roll raw usage records up per UTC day, and prune the raw records that are rolled up.

The rules that keep totals whole while raw records are pruned:

- Only complete days are rolled up; today is read raw by the console.
- A complete day is recomputed from its raw records on every run (the run
  replaces its rows in one transaction, and writes nothing when they are
  unchanged) until `FINAL_AFTER` has passed since its end. The first run
  after that recomputes it one last time and marks it final, recording the
  highest raw id it counted.
- A final day is never recomputed, so pruning its raw records cannot shrink
  it. A record written for it later (id above that high-water mark) is added
  to it, and the mark moves up.
- The prune deletes raw records of final days only, up to each day's mark:
  never a record that is not in a rollup.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Count, F, Max, Min, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from registry.models import (
    UsageDaily,
    UsageDailyTotal,
    UsageDayRollup,
    UsageRecord,
    UsageRollupDay,
    UsageStatus,
)

# Records get their created_at when the usage writer saves them, a second or so
# after the request ends; an hour covers a stalled writer and skewed clocks.
FINAL_AFTER = timedelta(hours=1)
GROUP = ("source", "model_name", "api_key_id", "app_credential_id", "user_id", "team_id")
# `UsageDailyTotal`'s group: the first fields of GROUP.
TOTAL_GROUP = GROUP[:2]
COUNTS = (
    "requests", "ok", "errors", "cancelled", "prompt_tokens", "completion_tokens",
    "ttft_ms_sum", "ttft_count", "total_time_ms_sum", "total_time_count",
)  # fmt: skip
PRUNE_BATCH = 5000

Key = tuple[Any, ...]


@dataclass(frozen=True)
class RollupReport:
    """What one roll-up run changed; all zero when it changed nothing."""

    recomputed: int = 0
    finalized: int = 0
    late_records: int = 0


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The UTC instants a day starts and ends at (end excluded)."""
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def utc_today() -> date:
    return timezone.now().astimezone(UTC).date()


def usage_aggregates() -> dict[str, Any]:
    """The sums of `UsageDaily`'s counters over raw records (shared with the console's live figures)."""
    return {
        "requests": Count("id"),
        "ok": Count("id", filter=Q(status=UsageStatus.OK)),
        "errors": Count("id", filter=Q(status=UsageStatus.ERROR)),
        "cancelled": Count("id", filter=Q(status=UsageStatus.CANCELLED)),
        "prompt_tokens": Sum("prompt_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "ttft_ms_sum": Sum("time_to_first_token_ms"),
        "ttft_count": Count("time_to_first_token_ms"),
        "total_time_ms_sum": Sum("total_time_ms"),
        "total_time_count": Count("total_time_ms"),
    }


def _grouped(records: QuerySet[UsageRecord], *, by_day: bool = False) -> dict[Key, dict[str, Any]]:
    """Aggregate raw records per group (and per day): {group key: counters}."""
    fields = (*GROUP, "day") if by_day else GROUP
    if by_day:
        records = records.annotate(day=TruncDate("created_at", tzinfo=UTC))
    rows = records.order_by().values(*fields).annotate(**usage_aggregates())
    return {tuple(row[f] for f in fields): {c: row[c] or 0 for c in COUNTS} for row in rows}


def _same(a: dict[Key, dict[str, Any]], b: dict[Key, dict[str, Any]]) -> bool:
    """Equal groups and counters; float sums compared loosely (a database may add in any order)."""
    if a.keys() != b.keys():
        return False
    return all(math.isclose(a[k][c], b[k][c], rel_tol=1e-9) for k in a for c in COUNTS)


def _stored(day: date) -> dict[Key, dict[str, Any]]:
    rows = UsageDaily.objects.filter(day=day).values(*GROUP, *COUNTS)
    return {tuple(row[f] for f in GROUP): {c: row[c] for c in COUNTS} for row in rows}


def _write_day(day: date, groups: dict[Key, dict[str, Any]]) -> None:
    UsageDaily.objects.filter(day=day).delete()
    UsageDailyTotal.objects.filter(day=day).delete()
    UsageDaily.objects.bulk_create(
        [
            UsageDaily(day=day, **dict(zip(GROUP, key, strict=True)), **counts)
            for key, counts in groups.items()
        ]
    )
    UsageDailyTotal.objects.bulk_create(
        [
            UsageDailyTotal(day=day, **dict(zip(TOTAL_GROUP, key, strict=True)), **counts)
            for key, counts in _totals(groups).items()
        ]
    )


def _totals(groups: dict[Key, dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """The groups summed per source and model."""
    totals: dict[Key, dict[str, Any]] = {}
    for key, counts in groups.items():
        total = totals.setdefault(key[: len(TOTAL_GROUP)], dict.fromkeys(COUNTS, 0))
        for name in COUNTS:
            total[name] += counts[name]
    return totals


def _recompute_day(day: date, *, high: int, final: bool) -> tuple[bool, bool]:
    """Replace a day that is not final with its raw records up to id `high`; (rewrote, finalized)."""
    start, end = day_bounds(day)
    with transaction.atomic():
        marker, _ = UsageRollupDay.objects.select_for_update().get_or_create(day=day)
        if marker.final:  # another run finalized it meanwhile
            return False, False
        groups = _grouped(UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end, id__lte=high))
        rewrite = not _same(groups, _stored(day))
        if rewrite:
            _write_day(day, groups)
        if rewrite or final:
            marker.final = final
            marker.records = sum(g["requests"] for g in groups.values())
            marker.last_record_id = high if final else 0
            marker.updated_at = timezone.now()
            marker.save()
    return rewrite, final


def _add_late_records(*, high: int) -> int:
    """Add records written for final days after they became final; return how many."""
    with transaction.atomic():
        finals = list(UsageRollupDay.objects.select_for_update().filter(final=True).order_by("day"))
        if not finals:
            return 0
        mark = max(m.last_record_id for m in finals)
        final_days = {m.day: m for m in finals}
        late = UsageRecord.objects.filter(
            id__gt=mark, id__lte=high, created_at__lt=day_bounds(finals[-1].day)[1]
        )
        added = {key: counts for key, counts in _grouped(late, by_day=True).items() if key[-1] in final_days}
        if not added:
            return 0
        for key, counts in added.items():
            *group, day = key
            _add_to_group(day, tuple(group), counts)
            final_days[day].records += counts["requests"]
        now = timezone.now()
        for marker in finals:
            marker.last_record_id, marker.updated_at = high, now
        UsageRollupDay.objects.bulk_update(finals, ["last_record_id", "records", "updated_at"])
        return sum(counts["requests"] for counts in added.values())


def _add_to_group(day: date, group: Key, counts: dict[str, Any]) -> None:
    rollups: dict[type[UsageDayRollup], tuple[str, ...]] = {UsageDaily: GROUP, UsageDailyTotal: TOTAL_GROUP}
    for model, fields in rollups.items():
        row, created = model._default_manager.get_or_create(
            day=day, **dict(zip(fields, group[: len(fields)], strict=True)), defaults=counts
        )
        if not created:
            model._default_manager.filter(pk=row.pk).update(**{c: F(c) + counts[c] for c in COUNTS})


def _days(first: date, last: date) -> Iterable[date]:
    while first <= last:
        yield first
        first += timedelta(days=1)


def roll_up_usage(*, day: date | None = None) -> RollupReport:
    """Bring the rollups up to date with the raw records (every complete day, or just `day`).

    Idempotent: a second run with no new records writes nothing.
    """
    now = timezone.now()
    yesterday = now.astimezone(UTC).date() - timedelta(days=1)
    high = UsageRecord.objects.aggregate(high=Max("id"))["high"] or 0
    late = _add_late_records(high=high)
    if day is not None:
        days: Iterable[date] = [day] if day <= yesterday else []
    else:
        oldest = UsageRecord.objects.aggregate(oldest=Min("created_at"))["oldest"]
        days = _days(oldest.astimezone(UTC).date(), yesterday) if oldest else []
    finals = set(UsageRollupDay.objects.filter(final=True).values_list("day", flat=True))
    recomputed = finalized = 0
    for each in days:
        if each in finals:
            continue
        rewrote, final = _recompute_day(each, high=high, final=now >= day_bounds(each)[1] + FINAL_AFTER)
        recomputed += rewrote
        finalized += final
    return RollupReport(recomputed=recomputed, finalized=finalized, late_records=late)


def prune_usage(*, retention_days: int, batch_size: int = PRUNE_BATCH) -> int:
    """Delete raw records of final days older than `retention_days` days; return how many.

    Records of a day that is not final, or above its day's mark, are kept
    whatever their age: only what a rollup holds is pruned. Deletes in
    batches, so that a large backlog holds no long lock. 0 keeps everything.
    """
    if retention_days <= 0:
        return 0
    cutoff = utc_today() - timedelta(days=retention_days)
    oldest = UsageRecord.objects.aggregate(oldest=Min("created_at"))["oldest"]
    if oldest is None:
        return 0
    markers = UsageRollupDay.objects.filter(
        final=True, day__lt=cutoff, day__gte=oldest.astimezone(UTC).date()
    ).order_by("day")
    deleted = 0
    for marker in markers:
        start, end = day_bounds(marker.day)
        rows = UsageRecord.objects.filter(
            created_at__gte=start, created_at__lt=end, id__lte=marker.last_record_id
        ).order_by()
        while ids := list(rows.values_list("id", flat=True)[:batch_size]):
            # Counted apart from the request logs (opt-in bodies) that go with them.
            deleted += UsageRecord.objects.filter(id__in=ids).delete()[1].get(UsageRecord._meta.label, 0)
    return deleted
