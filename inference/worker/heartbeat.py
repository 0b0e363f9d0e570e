"""The registration client: register, heartbeat, survive a database outage.

Runs in its own thread, so the sync ORM never touches the event loop. A
failed write is logged once per outage; the worker keeps serving, tries
again every RETRY_SECONDS (not every interval: portals wait for workers that
vanished, and a worker back sooner makes the wait shorter) and registers
again (an idempotent upsert) as soon as the database answers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from django.db import close_old_connections, connection

from inference.engines.base import EngineStats
from registry.services import workers

logger = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # between tries while the heartbeat fails


def resident_memory_bytes() -> int | None:
    """This process's resident memory (Linux's /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Heartbeat(threading.Thread):
    """Keep this worker's row alive every `interval` seconds until stopped."""

    def __init__(
        self,
        *,
        registration: workers.WorkerRegistration,
        stats: Callable[[], EngineStats],
        interval: float,
        on_intent: Callable[[str], None] = lambda intent: None,
    ) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.registration = registration
        self.stats = stats
        self.interval = interval
        self.on_intent = on_intent  # told the operator's intent (serve, drain, remove) after each write
        self.draining = False  # once draining, never register as online again
        self.failing = False
        self._needs_register = True
        self._stop_event = threading.Event()
        self._lock = threading.Lock()  # one DB write at a time (beat vs. drain/offline marks)

    def run(self) -> None:
        while not self._stop_event.wait(min(self.interval, RETRY_SECONDS) if self.failing else self.interval):
            self.beat()

    def beat(self) -> None:
        """Register when needed, else record figures; never raise."""
        with self._lock:
            try:
                close_old_connections()
                if self._needs_register and not self.draining:
                    self._register()
                    self._needs_register = False
                else:
                    self._record()
                if self.failing:
                    logger.warning("Database back: worker %s registered", self.registration.identity)
                self.failing = False
            except Exception as exc:
                self._on_error(exc)

    def _register(self) -> None:
        worker = workers.register_worker(registration=self.registration)
        self.on_intent(worker.intent)

    def _record(self) -> None:
        stats = self.stats()
        intent = workers.record_heartbeat(
            identity=self.registration.identity,
            in_flight=stats.in_flight,
            queued=stats.queued,
            tokens_per_second=stats.tokens_per_second,
            kv_cache_usage=stats.kv_cache_usage,
            memory_bytes=resident_memory_bytes(),
            prefix_cache_hit_rate=stats.prefix_cache_hit_rate,
            prefix_cache_tokens=stats.prefix_cache_tokens,
            interval=self.interval,
        )
        if intent is not None:
            self.on_intent(intent)
        elif not self.draining:
            # Swept offline (e.g. after an outage longer than the expiry), resumed or deleted: come back.
            self._register()

    def _on_error(self, exc: Exception) -> None:
        if not self.failing:
            logger.warning(
                "Heartbeat failed (%s: %s); serving on, retrying every %gs",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
                min(self.interval, RETRY_SECONDS),
            )
        self.failing = True
        self._needs_register = True
        try:
            connection.close()  # a broken connection must not be reused by the next beat
        except Exception:
            logger.debug("Closing the broken connection failed", exc_info=True)

    def mark(self, action: Callable[..., None]) -> None:
        """Run `mark_draining`/`mark_drained`/`mark_offline` for this worker; log instead of raising."""
        with self._lock:
            try:
                close_old_connections()
                action(identity=self.registration.identity)
            except Exception as exc:
                logger.warning("Could not record %s: %s", action.__name__, exc)
                try:
                    connection.close()
                except Exception:
                    logger.debug("Closing the broken connection failed", exc_info=True)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=10)
