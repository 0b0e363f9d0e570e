"""Usage rolled up per day, and raw usage pruned, without losing a request or a token."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django_q.models import Schedule

from registry import tasks
from registry.models import (
    ApiKey,
    AppCredential,
    UsageDaily,
    UsageDailyTotal,
    UsageRecord,
    UsageRollupDay,
    UsageStatus,
)
from registry.services import rollups
from registry.services.rollups import prune_usage, roll_up_usage, utc_today

pytestmark = pytest.mark.django_db

TOTALS = ("prompt_tokens", "completion_tokens")


def days_ago(n: int, *, hour: int = 12) -> datetime:
    return datetime.combine(utc_today() - timedelta(days=n), datetime.min.time(), tzinfo=UTC).replace(
        hour=hour
    )


def record(when: datetime, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": uuid.uuid4().hex,
        "source": "api",
        "model_name": "m",
        "prompt_tokens": 3,
    }
    values.update(fields)
    return UsageRecord.objects.create(created_at=when, completion_tokens=5, **values)


def raw_totals(*, before: datetime | None = None) -> dict[str, int]:
    rows = UsageRecord.objects.filter(created_at__lt=before) if before else UsageRecord.objects.all()
    sums = rows.aggregate(prompt_tokens=Sum("prompt_tokens"), completion_tokens=Sum("completion_tokens"))
    return {"requests": rows.count(), **{k: sums[k] or 0 for k in TOTALS}}


def per_model(rows: Any) -> dict[tuple, tuple]:
    grouped = rows.values("day", "source", "model_name").annotate(
        r=Sum("requests"), p=Sum("prompt_tokens"), c=Sum("completion_tokens"), e=Sum("errors")
    )
    return {(g["day"], g["source"], g["model_name"]): (g["r"], g["p"], g["c"], g["e"]) for g in grouped}


def rollup_totals() -> dict[str, int]:
    """The rollup's sums, after checking that the per-model rollup agrees with the per-key one."""
    assert per_model(UsageDailyTotal.objects.order_by()) == per_model(UsageDaily.objects.order_by())
    sums = UsageDaily.objects.aggregate(
        requests=Sum("requests"),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
    )
    return {k: v or 0 for k, v in sums.items()}


def snapshot() -> tuple[list[Any], ...]:
    """Every rollup row and day marker, ids included: what "changes nothing" compares."""
    return (
        list(UsageDaily.objects.order_by("pk").values()),
        list(UsageDailyTotal.objects.order_by("pk").values()),
        list(UsageRollupDay.objects.order_by("pk").values()),
    )


@pytest.fixture(autouse=True)
def days_final_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Yesterday is final at once, whatever the hour the tests run at (tests that need otherwise say so)."""
    monkeypatch.setattr(rollups, "FINAL_AFTER", timedelta(0))


@pytest.fixture
def history() -> dict[str, Any]:
    """Five past days of mixed usage, plus some today: keys, an app, a user, errors and timings."""
    key = ApiKey.objects.create(name="k", prefix="aaaa1111", hashed_secret="h1")
    app = AppCredential.objects.create(app_id="app-1", secret_ciphertext="x")
    user = get_user_model().objects.create_user("ada")
    for n in range(1, 6):
        record(days_ago(n), api_key=key, time_to_first_token_ms=10.0, total_time_ms=40.0)
        record(days_ago(n, hour=1), api_key=key, model_name="other", status=UsageStatus.ERROR)
        record(days_ago(n), source="signed", app_credential=app)
        record(days_ago(n, hour=23), source="chat", user=user, status=UsageStatus.CANCELLED)
        record(days_ago(n), source="api")  # no key: the NULL group
        record(days_ago(n), source="api")
    record(days_ago(0, hour=0), api_key=key)
    return {"key": key, "app": app, "user": user}


def test_rollup_counts_every_complete_day_per_group(history):
    report = roll_up_usage()

    assert report.recomputed == 5
    assert report.finalized == 5
    today = UsageRecord.objects.filter(created_at__gte=days_ago(0, hour=0))
    assert rollup_totals() == {
        "requests": UsageRecord.objects.count() - today.count(),
        "prompt_tokens": 3 * 30,
        "completion_tokens": 5 * 30,
    }
    assert not UsageDaily.objects.filter(day=utc_today()).exists()  # today is read raw
    day = utc_today() - timedelta(days=2)
    keyed = UsageDaily.objects.get(day=day, model_name="m", api_key=history["key"])
    assert (keyed.requests, keyed.ok, keyed.ttft_ms_sum, keyed.ttft_count, keyed.total_time_ms_sum) == (
        1, 1, 10.0, 1, 40.0,
    )  # fmt: skip
    assert UsageDaily.objects.get(day=day, model_name="other").errors == 1
    assert UsageDaily.objects.get(day=day, source="chat").cancelled == 1
    assert UsageDaily.objects.get(day=day, source="chat").user == history["user"]
    assert UsageDaily.objects.get(day=day, source="signed").app_credential == history["app"]
    anonymous = UsageDaily.objects.get(day=day, source="api", api_key=None)
    assert anonymous.requests == 2
    assert anonymous.ttft_count == 0
    assert UsageRollupDay.objects.filter(final=True).count() == 5


def test_a_second_rollup_changes_nothing(history):
    roll_up_usage()
    before = snapshot()

    assert roll_up_usage() == rollups.RollupReport()
    assert snapshot() == before


def test_a_day_that_is_not_final_is_recomputed_and_a_final_one_is_not(history, monkeypatch):
    monkeypatch.setattr(rollups, "FINAL_AFTER", timedelta(days=2))  # days 1 and 2 stay provisional
    roll_up_usage()
    assert set(UsageRollupDay.objects.filter(final=False).values_list("day", flat=True)) == {
        utc_today() - timedelta(days=1),
        utc_today() - timedelta(days=2),
    }
    record(days_ago(1), prompt_tokens=100)
    UsageRecord.objects.filter(created_at__date=utc_today() - timedelta(days=4)).delete()  # as a prune would

    report = roll_up_usage()

    assert report.recomputed == 1
    day1 = UsageDaily.objects.filter(day=utc_today() - timedelta(days=1)).aggregate(p=Sum("prompt_tokens"))
    assert day1["p"] == 6 * 3 + 100
    assert (
        UsageDaily.objects.filter(day=utc_today() - timedelta(days=4)).aggregate(r=Sum("requests"))["r"] == 6
    )


def test_records_written_for_a_final_day_are_added_once(history):
    roll_up_usage()
    before = rollup_totals()
    record(days_ago(3), prompt_tokens=7)  # a late write for a day already final

    assert roll_up_usage().late_records == 1
    assert roll_up_usage() == rollups.RollupReport()
    assert rollup_totals() == {
        "requests": before["requests"] + 1,
        "prompt_tokens": before["prompt_tokens"] + 7,
        "completion_tokens": before["completion_tokens"] + 5,
    }


def test_totals_are_equal_before_and_after_pruning(history):
    roll_up_usage()
    before = raw_totals(before=days_ago(0, hour=0))  # today's record is not rolled up yet
    assert rollup_totals() == before

    deleted = prune_usage(retention_days=2, batch_size=4)  # days 3, 4 and 5 go, in batches of 4

    assert deleted == 18
    assert not UsageRecord.objects.filter(created_at__lt=days_ago(2, hour=0)).exists()
    assert UsageRecord.objects.filter(created_at__gte=days_ago(2, hour=0)).count() == 13
    assert rollup_totals() == before
    roll_up_usage()
    assert rollup_totals() == before  # recomputing after the prune loses nothing
    assert prune_usage(retention_days=2) == 0


def test_nothing_that_is_not_in_a_rollup_is_pruned(history, monkeypatch):
    monkeypatch.setattr(rollups, "FINAL_AFTER", timedelta(days=3))  # days 1 to 3 stay provisional
    roll_up_usage()
    late = record(days_ago(5), prompt_tokens=11)  # written after day 5 became final

    assert prune_usage(retention_days=1) == 6 + 6  # days 4 and 5, up to their marks
    assert list(UsageRecord.objects.filter(created_at__lt=days_ago(3, hour=0))) == [late]
    assert UsageRecord.objects.filter(created_at__date=utc_today() - timedelta(days=3)).count() == 6
    roll_up_usage()
    rollup_totals()  # the per-model rollup took the late record too
    assert prune_usage(retention_days=1) == 1
    assert (
        UsageDaily.objects.filter(day=utc_today() - timedelta(days=5)).aggregate(p=Sum("prompt_tokens"))["p"]
        == 6 * 3 + 11
    )


def test_retention_zero_keeps_every_record(history):
    roll_up_usage()
    assert prune_usage(retention_days=0) == 0
    assert UsageRecord.objects.count() == 31


def test_deleting_a_key_keeps_its_history_apart(history):
    roll_up_usage()
    key_id = history["key"].pk
    history["key"].delete()

    assert UsageDaily.objects.filter(api_key_id=key_id).aggregate(r=Sum("requests"))["r"] == 10
    assert roll_up_usage() == rollups.RollupReport()


def test_one_row_per_group_even_without_a_key():
    UsageDaily.objects.create(day=date(2024, 1, 1), source="api", model_name="m", requests=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageDaily.objects.create(day=date(2024, 1, 1), source="api", model_name="m", requests=1)


def test_schedules_are_created_once_each():
    tasks.ensure_schedules()
    tasks.ensure_schedules()

    names = list(Schedule.objects.values_list("name", flat=True))
    assert sorted(names) == sorted(name for name, _, _ in tasks.SCHEDULES)
    rollup = Schedule.objects.get(func="registry.tasks.roll_up_usage")
    assert (rollup.schedule_type, rollup.minutes) == (Schedule.MINUTES, 10)
    assert Schedule.objects.filter(func="registry.tasks.prune_usage").count() == 1
    assert Schedule.objects.filter(func="registry.tasks.expire_stale_workers").count() == 1


def test_each_job_run_twice_changes_nothing_the_second_time(history, settings):
    settings.USAGE_RETENTION_DAYS = 3
    assert tasks.roll_up_usage()["finalized"] == 5
    assert tasks.prune_usage() == 12
    before = snapshot(), raw_totals()

    assert tasks.roll_up_usage() == {"recomputed": 0, "finalized": 0, "late_records": 0}
    assert tasks.prune_usage() == 0
    assert (snapshot(), raw_totals()) == before
