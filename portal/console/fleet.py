"""The fleet at a glance: every worker's live figures and every model's last five minutes.

A snapshot is a plain dict (JSON as it is), built in a fixed number of
queries whatever the fleet's size: the dashboard page, its JSON refresh and
its websocket all send the same thing.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import timedelta
from typing import Any

from django.db.models import Count, Q
from django.utils import timezone

from fleet.selectors import list_deployment_rows, list_recent_events
from registry.models import ServedModel, UsageRecord, UsageStatus, Worker, WorkerStatus

WINDOW = timedelta(minutes=5)


def percentile(values: list[float], share: float) -> float | None:
    """The nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(share * len(ordered)) - 1)], 1)


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


def _model_rows(now: Any) -> list[dict[str, Any]]:
    """Each model's last five minutes; TTFT and inter-token latency also per serving role (both, decode)."""
    live = Q(workers__status=WorkerStatus.ONLINE, workers__expires_at__gt=now)
    models = ServedModel.objects.annotate(online=Count("workers", filter=live)).order_by("name")
    recent = UsageRecord.objects.filter(created_at__gte=now - WINDOW).values_list(
        "model_name", "status", "time_to_first_token_ms", "total_time_ms", "completion_tokens",
        "worker__role", "prompt_tokens", "cached_tokens",
    )  # fmt: skip
    requests: dict[str, int] = defaultdict(int)
    errors: dict[str, int] = defaultdict(int)
    prompted: dict[str, int] = defaultdict(int)
    cached: dict[str, int] = defaultdict(int)
    latency: dict[str, list[float]] = defaultdict(list)
    ttft: dict[tuple[str, str], list[float]] = defaultdict(list)
    gaps: dict[tuple[str, str], list[float]] = defaultdict(list)
    for name, status, first, total, tokens, role, prompt, reused in recent.iterator(chunk_size=5000):
        requests[name] += 1
        prompted[name] += prompt
        cached[name] += reused
        errors[name] += status != UsageStatus.OK
        key = (name, "decode" if role == "decode" else "both")
        if first is not None:
            ttft[key].append(first)
        if total is not None:
            latency[name].append(total)
        if (gap := _token_gap(first, total, tokens)) is not None:
            gaps[key].append(gap)
    minutes = WINDOW.total_seconds() / 60
    rows = []
    for model in models:
        name = model.name
        roles = {role: _timings(ttft[(name, role)], gaps[(name, role)]) for role in ("both", "decode")}
        every = _timings(
            ttft[(name, "both")] + ttft[(name, "decode")], gaps[(name, "both")] + gaps[(name, "decode")]
        )
        rows.append(
            {
                "name": name,
                "task": model.task,
                "enabled": model.enabled,
                "dispatch_policy": model.dispatch_policy,
                "online_replicas": model.online,
                "requests_per_minute": round(requests[name] / minutes, 1),
                **every,
                "latency_p50_ms": percentile(latency[name], 0.5),
                "latency_p95_ms": percentile(latency[name], 0.95),
                "error_rate": round(errors[name] / requests[name], 3) if requests[name] else None,
                "prefix_cache_hit_rate": round(cached[name] / prompted[name], 3) if prompted[name] else None,
                "by_role": {role: figures for role, figures in roles.items() if ttft[(name, role)]},
            }
        )
    return rows


def fleet_snapshot() -> dict[str, Any]:
    """Deployments and their newest scaling events, workers and models as the dashboard shows them.

    Seven queries.
    """
    now = timezone.now()
    workers = Worker.objects.prefetch_related("served_models").order_by("identity")
    return {
        "at": now.isoformat(),
        "deployments": list_deployment_rows(),
        "deployment_events": list_recent_events(),  # deployment id → its newest events
        "workers": [_worker_row(worker, now) for worker in workers],
        "models": _model_rows(now),
    }
