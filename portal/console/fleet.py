"""The fleet at a glance: every worker's live figures and every model's last five minutes.

A snapshot is a plain dict (JSON as it is), built in a fixed number of
queries whatever the fleet's size: the dashboard page, its JSON refresh and
its websocket all send the same thing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db.models import Count, Q
from django.utils import timezone

from fleet.selectors import list_deployment_rows, list_recent_events
from portal.console.teams import team_rows
from portal.console.trends import empty_trend, hourly_trends, percentile
from portal.metrics import outcomes
from registry.models import ServedModel, UsageRecord, Worker, WorkerStatus
from teams.scoping import NONE, UsageScope

WINDOW = timedelta(minutes=5)


def _worker_row(worker: Worker, now: Any) -> dict[str, Any]:
    age = None if worker.last_heartbeat is None else (now - worker.last_heartbeat).total_seconds()
    return {
        "id": worker.id,
        "identity": worker.identity,
        "status": worker.effective_status,
        "intent": worker.intent,
        "role": worker.role,
        "kind": worker.kind,
        "backend": worker.backend,
        "device": worker.device,
        "models": sorted(m.name for m in worker.served_models.all()),
        "address": worker.address,
        "heartbeat_age": None if age is None else round(age, 1),
        "in_flight": worker.in_flight,
        "queued": worker.queued,
        "max_concurrency": worker.max_concurrency,
        "tokens_per_second": round(worker.tokens_per_second, 1),
        "kv_cache_usage": worker.kv_cache_usage,
        "prefix_cache_hit_rate": worker.prefix_cache_hit_rate,
        "memory_bytes": worker.memory_bytes,
    }


def _token_gap(first: float | None, total: float | None, tokens: int) -> float | None:
    """The mean gap between a streamed answer's tokens (None when the answer came in one piece)."""
    if first is None or total is None or tokens < 2 or total <= first:
        return None
    return (total - first) / (tokens - 1)


def _timings(ttft: list[float], gaps: list[float]) -> dict[str, float | None]:
    return {
        "ttft_p50_ms": percentile(ttft, 0.5),
        "ttft_p95_ms": percentile(ttft, 0.95),
        "itl_p50_ms": percentile(gaps, 0.5),
        "itl_p95_ms": percentile(gaps, 0.95),
    }


@dataclass
class _Tally:
    """One model's requests in the window, sorted by outcome, with the timings each figure counts."""

    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(outcomes.OUTCOMES, 0))
    prompted: int = 0
    cached: int = 0
    latency: list[float] = field(default_factory=list)  # successful requests only
    ttft: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # by serving role
    gaps: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # streamed requests only

    def add(self, record: tuple[Any, ...]) -> None:
        _name, code, first, total, tokens, role, prompt, reused, streamed = record
        kind = outcomes.outcome(code)
        self.outcomes[kind] += 1
        self.prompted += prompt
        self.cached += reused
        role = "decode" if role == "decode" else "both"
        if first is not None:
            self.ttft[role].append(first)
        if kind != outcomes.OK:
            return
        if total is not None:
            self.latency.append(total)
        if streamed and (gap := _token_gap(first, total, tokens)) is not None:
            self.gaps[role].append(gap)

    def figures(self, minutes: float) -> dict[str, Any]:
        requests = sum(self.outcomes.values())
        every = _timings(self.ttft["both"] + self.ttft["decode"], self.gaps["both"] + self.gaps["decode"])
        roles = {role: _timings(self.ttft[role], self.gaps[role]) for role in ("both", "decode")}
        return {
            "requests_per_minute": round(requests / minutes, 1),
            **every,
            "latency_p50_ms": percentile(self.latency, 0.5),
            "latency_p95_ms": percentile(self.latency, 0.95),
            # Server-side failures only; the client's errors, limit refusals and cancels are counted apart.
            "error_rate": round(self.outcomes[outcomes.SERVER_ERROR] / requests, 3) if requests else None,
            "outcomes": dict(self.outcomes),
            "prefix_cache_hit_rate": round(self.cached / self.prompted, 3) if self.prompted else None,
            "by_role": {role: figures for role, figures in roles.items() if self.ttft[role]},
        }


def _model_rows(now: Any) -> list[dict[str, Any]]:
    """Each model's last five minutes; TTFT and inter-token latency also per serving role (both, decode)."""
    live = Q(workers__status=WorkerStatus.ONLINE, workers__expires_at__gt=now)
    models = ServedModel.objects.annotate(online=Count("workers", filter=live)).order_by("name")
    # A disabled model nothing serves is not live (e.g. its deployment was deleted): the admin lists it.
    models = models.filter(Q(enabled=True) | Q(online__gt=0))
    recent = UsageRecord.objects.filter(created_at__gte=now - WINDOW).values_list(
        "model_name", "status_code", "time_to_first_token_ms", "total_time_ms", "completion_tokens",
        "worker__role", "prompt_tokens", "cached_tokens", "streamed",
    )  # fmt: skip
    tallies: dict[str, _Tally] = defaultdict(_Tally)
    for record in recent.iterator(chunk_size=5000):
        tallies[record[0]].add(record)
    trends = hourly_trends(now)
    minutes = WINDOW.total_seconds() / 60
    return [
        {
            "name": model.name,
            "task": model.task,
            "enabled": model.enabled,
            "dispatch_policy": model.dispatch_policy,
            "online_replicas": model.online,
            **tallies[model.name].figures(minutes),
            "last_hour": trends.get(model.name) or empty_trend(),
        }
        for model in models
    ]


def fleet_snapshot(scope: UsageScope = NONE) -> dict[str, Any]:
    """Deployments and their newest scaling events, workers, models, and the teams `scope` covers.

    A fixed number of queries, whatever the fleet and the traffic.
    """
    now = timezone.now()
    workers = Worker.objects.prefetch_related("served_models").order_by("identity")
    return {
        "at": now.isoformat(),
        "deployments": list_deployment_rows(),
        "deployment_events": list_recent_events(),  # deployment id → its newest events
        "workers": [_worker_row(worker, now) for worker in workers],
        "models": _model_rows(now),
        "teams": team_rows(scope),
    }
