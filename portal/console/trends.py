"""Each model's last hour, a minute a point: requests per minute and the median time to first token.

The dashboard draws them as sparklines. Points run oldest first; the last is
the minute now running. A minute without a first token has no TTFT (None).
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from registry.models import UsageRecord

MINUTES = 60


def percentile(values: list[float], share: float) -> float | None:
    """The nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(share * len(ordered)) - 1)], 1)


def empty_trend() -> dict[str, list[Any]]:
    return {"requests": [0] * MINUTES, "ttft_p50_ms": [None] * MINUTES}


def hourly_trends(now: datetime) -> dict[str, dict[str, list[Any]]]:
    """Model name → its requests and TTFT p50 per minute over the hour up to `now` (one query)."""
    rows = UsageRecord.objects.filter(created_at__gt=now - timedelta(minutes=MINUTES)).values_list(
        "model_name", "created_at", "time_to_first_token_ms"
    )
    counts: dict[str, list[int]] = defaultdict(lambda: [0] * MINUTES)
    firsts: dict[str, list[list[float]]] = defaultdict(lambda: [[] for _ in range(MINUTES)])
    for name, created, first in rows.iterator(chunk_size=5000):
        ago = int(max(0.0, (now - created).total_seconds()) // 60)
        if ago >= MINUTES:
            continue
        point = MINUTES - 1 - ago
        counts[name][point] += 1
        if first is not None:
            firsts[name][point].append(first)
    return {
        name: {"requests": counts[name], "ttft_p50_ms": [percentile(values, 0.5) for values in firsts[name]]}
        for name in counts
    }
