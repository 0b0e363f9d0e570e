"""A worker whose heartbeat fails tries again every second, not every interval, until it lands."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import OperationalError

from inference.engines.base import EngineStats
from inference.worker.heartbeat import Heartbeat
from registry.models import Worker, WorkerStatus
from registry.services import workers
from tests.processes import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_failing_heartbeat_retries_every_second_and_registers_once_the_database_answers(monkeypatch):
    registration = workers.WorkerRegistration(
        identity="hb-retry", address="http://127.0.0.1:9", model_names=("canned",), heartbeat_interval=30.0
    )
    heartbeat = Heartbeat(registration=registration, stats=lambda: EngineStats(0, 0, 0.0), interval=30.0)
    tries: list[float] = []
    lock = threading.Lock()
    database_up = threading.Event()
    real_register = workers.register_worker

    def register(**kwargs: object) -> Worker:
        with lock:
            tries.append(time.monotonic())
        if not database_up.is_set():
            raise OperationalError("could not connect to server")
        return real_register(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(workers, "register_worker", register)
    heartbeat.beat()  # the first beat fails: the database is down
    assert heartbeat.failing
    heartbeat.start()
    try:
        time.sleep(2.6)
        with lock:
            assert len(tries) >= 3  # 1 + one a second, though the interval is 30 s
        database_up.set()
        assert wait_for(lambda: not heartbeat.failing, timeout=3)
        assert Worker.objects.get(identity="hb-retry").status == WorkerStatus.ONLINE
        with lock:
            landed = len(tries)
        time.sleep(1.5)
        with lock:
            assert len(tries) == landed  # back to the interval once it landed
    finally:
        heartbeat.stop()
