"""Per-worker heartbeat figures, read from the Worker rows once per scrape.

Workers write their figures (in flight, queued, tokens/s, KV cache) into
their rows with every heartbeat, so any portal can report the whole fleet
with one query and no state of its own: in multiprocess mode they need no
files either, and every portal process answers the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from registry.models import Worker, WorkerStatus

FIELDS = (
    "identity",
    "kind",
    "backend",
    "device",
    "status",
    "expires_at",
    "last_heartbeat",
    "max_concurrency",
    "in_flight",
    "queued",
    "tokens_per_second",
    "kv_cache_usage",
)


@dataclass(frozen=True)
class WorkerFigures:
    """One worker's row as the scrape saw it."""

    identity: str
    kind: str
    backend: str
    device: str
    status: str  # effective: a live status with an expired heartbeat reads "offline"
    heartbeat_age: float | None
    max_concurrency: int
    in_flight: int
    queued: int
    tokens_per_second: float
    kv_cache_usage: float | None


def read_workers() -> list[WorkerFigures]:
    """Every worker's figures, in one query (sync: call it from a sync view or one hop)."""
    now = timezone.now()
    rows = Worker.objects.only(*FIELDS).order_by("identity")
    return [
        WorkerFigures(
            identity=w.identity,
            kind=w.kind,
            backend=w.backend,
            device=w.device,
            status=w.effective_status,
            heartbeat_age=(now - w.last_heartbeat).total_seconds() if w.last_heartbeat else None,
            max_concurrency=w.max_concurrency,
            in_flight=w.in_flight,
            queued=w.queued,
            tokens_per_second=w.tokens_per_second,
            kv_cache_usage=w.kv_cache_usage,
        )
        for w in rows
    ]


class HeartbeatCollector(Collector):
    """Gauges of the workers' last heartbeats, from figures read before the scrape renders."""

    def __init__(self, workers: list[WorkerFigures]) -> None:
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, documentation: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"portal_worker_{name}", documentation, labels=["worker", *labels])

        info = gauge("info", "A worker's kind, engine and device (always 1).", ("kind", "backend", "device"))
        status = gauge("status", "1 for the worker's current status, 0 for the others.", ("status",))
        age = gauge("heartbeat_age_seconds", "Seconds since the worker's last heartbeat.")
        capacity = gauge("max_concurrency", "Requests the worker runs at once.")
        in_flight = gauge("in_flight", "Requests generating on the worker, by its last heartbeat.")
        queued = gauge("queued", "Requests waiting for a slot on the worker, by its last heartbeat.")
        speed = gauge("tokens_per_second", "Output tokens per second, by the worker's last heartbeat.")
        kv = gauge("kv_cache_usage_ratio", "Share of the KV cache in use, where the engine reports it.")
        for w in self.workers:
            info.add_metric([w.identity, w.kind, w.backend, w.device], 1)
            for value in WorkerStatus.values:
                status.add_metric([w.identity, value], float(w.status == value))
            if w.heartbeat_age is not None:
                age.add_metric([w.identity], w.heartbeat_age)
            capacity.add_metric([w.identity], w.max_concurrency)
            in_flight.add_metric([w.identity], w.in_flight)
            queued.add_metric([w.identity], w.queued)
            speed.add_metric([w.identity], w.tokens_per_second)
            if w.kv_cache_usage is not None:
                kv.add_metric([w.identity], w.kv_cache_usage)
        yield from (info, status, age, capacity, in_flight, queued, speed, kv)
