"""Each model's last hour, a minute a point: requests per minute and the median time to first token.

The dashboard draws them as sparklines. Points are wall-clock minutes, oldest
first; the last is the minute now running. A minute without a first token has
no TTFT (None). Minutes long past change only when a minute ends, so they are
read once a minute and kept in the cache; each snapshot reads the last few
minutes' rows alone (a usage record is written a moment after its request
ends, so the minute just ended may still grow).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from django.core.cache import cache

from registry.models import UsageRecord

logger = logging.getLogger(__name__)

MINUTES = 60
RECENT = 3  # the running minute and the two before it: read on every snapshot
Trend = dict[str, list[Any]]  # {"requests": [...], "ttft_p50_ms": [...]}


def percentile(values: list[float], share: float) -> float | None:
    """The nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(share * len(ordered)) - 1)], 1)


def empty_trend() -> Trend:
    return _blank(MINUTES)


def _minutes(since: datetime, until: datetime, points: int) -> dict[str, Trend]:
    """Model name → its `points` minutes from `since` (a minute's start) up to `until` (one query)."""
    rows = UsageRecord.objects.filter(created_at__gte=since, created_at__lt=until).values_list(
        "model_name", "created_at", "time_to_first_token_ms"
    )
    counts: dict[str, list[int]] = defaultdict(lambda: [0] * points)
    firsts: dict[str, list[list[float]]] = defaultdict(lambda: [[] for _ in range(points)])
    for name, created, first in rows.iterator(chunk_size=5000):
        point = min(points - 1, int((created - since).total_seconds() // 60))
        counts[name][point] += 1
        if first is not None:
            firsts[name][point].append(first)
    return {
        name: {"requests": counts[name], "ttft_p50_ms": [percentile(values, 0.5) for values in firsts[name]]}
        for name in counts
    }


def _past_minutes(until: datetime) -> dict[str, Trend]:
    """The hour's minutes before `until`, from the cache when another snapshot read them this minute."""
    points = MINUTES - RECENT
    since = until - timedelta(minutes=points)
    key = f"console:trends:{until.isoformat()}"
    try:
        kept = cache.get(key)
    except Exception:  # the cache (Redis) is away: read them, as without one
        logger.warning("The cache is unavailable: the dashboard reads the last hour's trends itself.")
        return _minutes(since, until, points)
    if kept is None:
        kept = _minutes(since, until, points)
        try:
            cache.set(key, kept, timeout=120)
        except Exception:
            logger.warning("The cache is unavailable: the last hour's trends are not kept.")
    return kept


def hourly_trends(now: datetime) -> dict[str, Trend]:
    """Model name → its requests and TTFT p50 per minute over the hour up to `now`."""
    recent_since = now.replace(second=0, microsecond=0) - timedelta(minutes=RECENT - 1)
    past = _past_minutes(recent_since)
    recent = _minutes(recent_since, now + timedelta(seconds=1), RECENT)
    trends = {}
    for name in past.keys() | recent.keys():
        before = past.get(name) or _blank(MINUTES - RECENT)
        last = recent.get(name) or _blank(RECENT)
        trends[name] = {key: before[key] + last[key] for key in ("requests", "ttft_p50_ms")}
    return trends


def _blank(points: int) -> Trend:
    return {"requests": [0] * points, "ttft_p50_ms": [None] * points}
