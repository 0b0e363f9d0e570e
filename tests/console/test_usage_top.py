"""The usage page's top tables are exact: rolled leaders plus today's raw records, against brute force."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from portal.console.usage import selectors
from portal.console.usage.forms import UsageFilters
from registry.models import ApiKey, UsageRecord
from registry.services import rollups
from registry.services.rollups import roll_up_usage, utc_today

pytestmark = pytest.mark.django_db


def at(days_ago: int) -> datetime:
    return datetime.combine(utc_today() - timedelta(days=days_ago), datetime.min.time(), tzinfo=UTC).replace(
        hour=12
    )


def brute_force(rank: str, top: int) -> list[tuple[int | None, int]]:
    figures: dict[int | None, int] = defaultdict(int)
    for record in UsageRecord.objects.exclude(api_key=None):
        tokens = record.prompt_tokens + record.completion_tokens
        figures[record.api_key_id] += 1 if rank == "requests" else tokens
    return sorted(figures.items(), key=lambda item: (-item[1], item[0] or 0))[:top]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_top_keys_match_a_brute_force_ranking_whatever_today_adds(monkeypatch, seed):
    """Today's raw records lift keys that the rollup ranks low: few leaders must still give the exact top."""
    monkeypatch.setattr(rollups, "FINAL_AFTER", timedelta(0))
    rng = random.Random(seed)
    keys = [
        ApiKey.objects.create(name=f"k{n}", prefix=f"pfx{n:05d}", hashed_secret=f"h{n}") for n in range(12)
    ]
    rows = []
    for days_ago in range(4, -1, -1):  # today (0) stays raw
        for n, key in enumerate(keys):
            # Past days favour the first keys; today favours the last ones.
            weight = len(keys) - n if days_ago else 3 * n
            for i in range(rng.randint(0, weight)):
                rows.append(
                    UsageRecord(
                        created_at=at(days_ago), request_id=f"{days_ago}-{n}-{i}", source="api",
                        model_name="m", api_key=key, prompt_tokens=rng.randint(1, 50),
                        completion_tokens=rng.randint(1, 50),
                    )
                )  # fmt: skip
    UsageRecord.objects.bulk_create(rows)
    roll_up_usage()
    filters = UsageFilters(start=utc_today() - timedelta(days=6), end=utc_today())
    rolled = selectors.rollup_rows(filters)
    raw = selectors.raw_rows(filters, selectors.unrolled_days(filters))
    assert rolled.exists()
    assert raw.exists()
    for leaders in (1, 2, 5, 100):
        for top in (1, 3, 5):
            monkeypatch.setattr(selectors, "LEADERS", leaders)
            monkeypatch.setattr(selectors, "TOP", top)
            for rank in ("requests", "tokens"):
                got = [(row["id"], row[rank]) for row in selectors._top("api_key_id", rank, rolled, raw)]
                assert got == brute_force(rank, top), (leaders, top, rank)
