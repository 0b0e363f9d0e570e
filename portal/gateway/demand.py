"""What this portal sees of each model's load, written for the fleet's scheduler; whether workers are coming.

The agents that scale deployments run in other processes than the portals,
so each portal process writes, per model, its requests in flight, those
waiting for a worker (and since when) and its last request into
`fleet.ModelDemand`: at most once a second, off the event loop, again every
REFRESH_SECONDS while it has any (so the scheduler can tell fresh rows from a
dead portal's), and once more when they end.

A request for a model that has no online worker waits in the model's queue,
as for a busy one, when workers are coming: a deployment will start one (a
cold start, bounded by its `cold_start_timeout`), or one of its workers that
an operator did not drain beat within the last REREGISTER_WINDOW seconds
(expired heartbeats, a restart, a database outage: bounded by the model's
queue timeout).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from channels.db import database_sync_to_async
from django.utils import timezone

from fleet.models import Deployment, ModelDemand
from portal.gateway.tasks import spawn
from registry.models import Worker, WorkerIntent
from registry.services.dispatch import ResolvedModel

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
REFRESH_SECONDS = 3.0
DEPLOYMENTS_CACHE_SECONDS = 2.0
REREGISTER_WINDOW = 60.0


Row = tuple[str, dict[str, object]]


@dataclass
class _Model:
    in_flight: int = 0
    waiting: dict[str, float] = field(default_factory=dict)  # request id → when it began waiting (epoch)
    last_request: float | None = None
    dirty: bool = True
    written_at: float = 0.0  # monotonic


def source() -> str:
    """This portal process, as its rows name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Demand:
    """This portal's load per model, written to `fleet.ModelDemand`; whether a model's workers are coming."""

    def __init__(self) -> None:
        self._models: dict[str, _Model] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._recent: dict[int, tuple[float, bool]] = {}  # model id → (checked at, a worker beat lately)
        self._deployments: tuple[float, dict[str, float]] = (
            -1e9,
            {},
        )  # (loaded at, name → cold-start timeout)

    def arrived(self, model: str) -> None:
        """One more request of `model` in flight (until `finished`)."""
        state = self._models.setdefault(model, _Model())
        state.in_flight += 1
        state.last_request = time.time()
        self._changed(state)

    def finished(self, model: str, request_id: str) -> None:
        state = self._models.get(model)
        if state is not None:
            state.in_flight = max(0, state.in_flight - 1)
            state.waiting.pop(request_id, None)
            self._changed(state)

    def waiting(self, model: str, request_id: str) -> None:
        """The request waits for a worker (idempotent: its first call sets since when)."""
        state = self._models.setdefault(model, _Model())
        if request_id not in state.waiting:
            state.waiting[request_id] = time.time()
            self._changed(state)

    def stopped_waiting(self, model: str, request_id: str) -> None:
        state = self._models.get(model)
        if state is not None and state.waiting.pop(request_id, None) is not None:
            self._changed(state)

    async def workers_coming(self, model: ResolvedModel) -> float | None:
        """Seconds a request may wait for a worker of `model` that has none online; None: none is coming."""
        timeouts = await self._deployment_timeouts()
        if model.name in timeouts:
            return timeouts[model.name]
        if model.queue_timeout > 0 and await self._beat_lately(model.id):
            return model.queue_timeout
        return None

    async def _beat_lately(self, model_id: int) -> bool:
        """Whether a worker of the model that no operator drained beat within REREGISTER_WINDOW (cached)."""
        checked_at, answer = self._recent.get(model_id, (-1e9, False))
        if time.monotonic() - checked_at > DEPLOYMENTS_CACHE_SECONDS:
            answer = await database_sync_to_async(_load_beat_lately)(model_id)
            if len(self._recent) > 10_000:
                self._recent.clear()
            self._recent[model_id] = (time.monotonic(), answer)
        return answer

    async def _deployment_timeouts(self) -> dict[str, float]:
        """Served name → cold-start timeout, for deployments that run or may start replicas (cached)."""
        loaded_at, timeouts = self._deployments
        if time.monotonic() - loaded_at > DEPLOYMENTS_CACHE_SECONDS:
            timeouts = await database_sync_to_async(_load_deployments)()
            self._deployments = (time.monotonic(), timeouts)
        return timeouts

    def _changed(self, state: _Model) -> None:
        state.dirty = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # outside a loop (a sync test): nothing to flush with
        flusher = self._flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not loop:
            self._flusher = spawn(self._flush_loop())

    async def _flush_loop(self) -> None:
        """Write what changed now, then at most once a second while anything is in flight."""
        while True:
            rows = self._due(time.monotonic())
            if rows:
                try:
                    await database_sync_to_async(_write)(rows, source())
                except Exception as exc:  # the scheduler reads stale load until the database answers again
                    logger.warning("could not record the models' demand: %s", exc)
                    for name, _ in rows:
                        self._models[name].dirty = True
            elif not any(state.in_flight for state in self._models.values()):
                return
            await asyncio.sleep(FLUSH_SECONDS)

    def _due(self, now: float) -> list[Row]:
        rows: list[Row] = []
        for name, state in list(self._models.items()):
            if not (state.dirty or (state.in_flight and now - state.written_at >= REFRESH_SECONDS)):
                continue
            state.dirty, state.written_at = False, now
            oldest = min(state.waiting.values(), default=None)
            rows.append((name, {
                "in_flight": state.in_flight,
                "waiting": len(state.waiting),
                "waiting_since": _moment(oldest),
                "last_request_at": _moment(state.last_request),
            }))  # fmt: skip
            if not state.in_flight and not state.waiting:
                del self._models[name]  # written once more as idle; its last request stays in the row
        return rows


def _load_beat_lately(model_id: int) -> bool:
    since = timezone.now() - timedelta(seconds=REREGISTER_WINDOW)
    workers = Worker.objects.filter(served_models__id=model_id, intent=WorkerIntent.SERVE)
    return workers.filter(last_heartbeat__gt=since).exists()


def _load_deployments() -> dict[str, float]:
    timeouts: dict[str, float] = {}
    for deployment in Deployment.objects.all():
        if deployment.replicas > 0 or (deployment.max_replicas or 0) > 0:
            for name in deployment.served_names:
                timeouts[name] = float(deployment.cold_start_timeout)
    return timeouts


def _moment(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def _write(rows: list[Row], portal: str) -> None:
    now = timezone.now()
    for model, values in rows:
        ModelDemand.objects.update_or_create(
            model=model, source=portal, defaults={**values, "updated_at": now}
        )
