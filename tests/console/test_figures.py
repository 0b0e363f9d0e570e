"""The dashboard's and /metrics' figures over a mix of outcomes: only server failures are errors.

A model's requests in the window: two answered (one streamed, one not), a 400
from the client, a 429 refusal, a 499 cancel and a 502 worker fault.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.test import RequestFactory
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from portal.console.fleet import fleet_snapshot
from portal.console.trends import MINUTES
from portal.metrics import instruments, outcomes
from portal.metrics.views import metrics
from registry.models import ServedModel, UsageRecord, UsageStatus

MIX = [
    # status code, TTFT ms, total ms, completion tokens, streamed
    (200, 100.0, 1100.0, 11, True),
    (200, 300.0, 300.0, 11, False),
    (400, None, 0.05, 0, False),
    (429, None, 0.06, 0, False),
    (499, 200.0, 250.0, 3, True),
    (502, None, 40.0, 0, False),
]


def test_each_status_has_one_outcome() -> None:
    assert [outcomes.outcome(code) for code, *_ in MIX] == [
        "ok", "ok", "client_error", "limited", "cancelled", "server_error",
    ]  # fmt: skip
    assert (outcomes.outcome(503), outcomes.outcome(504), outcomes.outcome(404)) == (
        "server_error",
        "server_error",
        "client_error",
    )


@pytest.mark.django_db
def test_the_dashboard_counts_only_server_failures_as_errors() -> None:
    cache.clear()  # the hour's older minutes are kept a minute: another test's may be there
    ServedModel.objects.create(name="mix", task="chat")
    now = timezone.now()
    for index, (code, first, total, tokens, streamed) in enumerate(MIX):
        UsageRecord.objects.create(
            request_id=f"mix-{index}",
            model_name="mix",
            endpoint="chat",
            time_to_first_token_ms=first,
            total_time_ms=total,
            completion_tokens=tokens,
            streamed=streamed,
            status=UsageStatus.OK
            if code == 200
            else UsageStatus.CANCELLED
            if code == 499
            else UsageStatus.ERROR,
            status_code=code,
            created_at=now - timedelta(seconds=30 + index),
        )
    UsageRecord.objects.create(
        request_id="old",
        model_name="mix",
        time_to_first_token_ms=900.0,
        created_at=now - timedelta(minutes=30),
    )
    mix = next(m for m in fleet_snapshot()["models"] if m["name"] == "mix")
    assert mix["outcomes"] == {"ok": 2, "server_error": 1, "client_error": 1, "limited": 1, "cancelled": 1}
    assert mix["error_rate"] == round(1 / 6, 3)  # the 502 alone
    assert mix["requests_per_minute"] == 1.2  # 6 requests in 5 minutes
    assert (mix["latency_p50_ms"], mix["latency_p95_ms"]) == (300.0, 1100.0)  # successes only
    assert (mix["itl_p50_ms"], mix["itl_p95_ms"]) == (100.0, 100.0)  # the streamed success only
    assert mix["ttft_p50_ms"] == 200.0  # every request that had a first token
    trend = mix["last_hour"]
    assert len(trend["requests"]) == len(trend["ttft_p50_ms"]) == MINUTES
    assert sum(trend["requests"]) == 7
    assert trend["requests"][-1] + trend["requests"][-2] == 6  # the mix, within the last two minutes
    assert trend["requests"][MINUTES - 31] == 1  # the old request, 30 minutes ago
    assert trend["ttft_p50_ms"][MINUTES - 31] == 900.0
    kept = fleet_snapshot()["models"]  # again: the older minutes from the cache, the recent ones read anew
    assert next(m for m in kept if m["name"] == "mix")["last_hour"] == trend


def _samples(text: str) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("outcome", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("model") == "metrics-mix"
    }


@pytest.mark.django_db
def test_metrics_count_outcomes_apart_and_carry_no_created_series() -> None:
    for code, first, total, tokens, streamed in MIX:
        ok = code == 200
        instruments.record_request(
            model="metrics-mix",
            worker="w",
            status=code,
            prompt_tokens=3,
            completion_tokens=tokens,
            ttft=None if first is None else first / 1000,
            latency=total / 1000 if ok else None,
            token_gap=0.1 if ok and streamed else None,
        )
    text = metrics(RequestFactory().get("/metrics")).content.decode()
    samples = _samples(text)
    counted = {outcome: samples[("portal_request_outcomes_total", outcome)] for outcome in outcomes.OUTCOMES}
    assert counted == {
        "ok": 2, "server_error": 1, "client_error": 1, "limited": 1, "cancelled": 1,
    }  # fmt: skip
    assert samples[("portal_request_duration_seconds_count", "")] == 2
    assert samples[("portal_inter_token_latency_seconds_count", "")] == 1
    assert "_created" not in text
