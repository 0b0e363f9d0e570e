"""The heartbeat thread survives a database outage and registers again when it is back."""

from __future__ import annotations

import logging

import pytest
from django.db import OperationalError

from inference.engines.base import EngineStats
from inference.worker.heartbeat import Heartbeat
from registry.models import Worker, WorkerStatus
from registry.services import workers

pytestmark = pytest.mark.django_db(transaction=True)


def make_heartbeat() -> Heartbeat:
    registration = workers.WorkerRegistration(
        identity="hb-unit", address="http://127.0.0.1:9", model_names=("canned",), heartbeat_interval=1.0
    )
    return Heartbeat(registration=registration, stats=lambda: EngineStats(1, 2, 3.0), interval=1.0)


def test_outage_is_logged_once_and_the_worker_registers_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    heartbeat = make_heartbeat()
    heartbeat.beat()
    assert Worker.objects.get(identity="hb-unit").status == WorkerStatus.ONLINE

    def down(**kwargs: object) -> bool:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(workers, "record_heartbeat", down)
    monkeypatch.setattr(workers, "register_worker", down)
    with caplog.at_level(logging.WARNING, logger="inference.worker.heartbeat"):
        heartbeat.beat()
        heartbeat.beat()
    assert heartbeat.failing
    assert len([r for r in caplog.records if "Heartbeat failed" in r.message]) == 1
    # Meanwhile the sweep took the row offline; when the database answers, the worker comes back.
    workers.expire_stale_workers()
    Worker.objects.filter(identity="hb-unit").update(status=WorkerStatus.OFFLINE)
    monkeypatch.undo()
    heartbeat.beat()
    row = Worker.objects.get(identity="hb-unit")
    assert not heartbeat.failing
    assert row.status == WorkerStatus.ONLINE


def test_swept_worker_registers_again_on_its_next_beat() -> None:
    heartbeat = make_heartbeat()
    heartbeat.beat()
    workers.mark_offline(identity="hb-unit")
    heartbeat.beat()
    assert Worker.objects.get(identity="hb-unit").effective_status == WorkerStatus.ONLINE


def test_draining_worker_never_registers_as_online_again() -> None:
    heartbeat = make_heartbeat()
    heartbeat.beat()
    heartbeat.draining = True
    workers.mark_offline(identity="hb-unit")
    heartbeat.beat()
    assert Worker.objects.get(identity="hb-unit").status == WorkerStatus.OFFLINE


def test_a_beat_stores_the_engines_figures_with_its_kv_cache_use_and_memory() -> None:
    registration = workers.WorkerRegistration(
        identity="hb-kv", address="http://127.0.0.1:9", model_names=("canned",), heartbeat_interval=1.0
    )
    heartbeat = Heartbeat(
        registration=registration, stats=lambda: EngineStats(3, 1, 42.0, 0.25), interval=1.0
    )
    heartbeat.beat()  # registers
    heartbeat.beat()  # records the figures
    row = Worker.objects.get(identity="hb-kv")
    assert (row.in_flight, row.queued, row.tokens_per_second, row.kv_cache_usage) == (3, 1, 42.0, 0.25)
    assert row.memory_bytes is not None
    assert 10 * 2**20 < row.memory_bytes < 64 * 2**30  # this test process's resident memory
