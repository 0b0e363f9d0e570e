"""In-memory figures of this portal: requests in flight per worker, workers excluded after a failure.

They complement the heartbeat figures, which are up to one heartbeat old:
during a burst, this portal's own count is the fresher one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace
from datetime import datetime

from django.conf import settings

from registry.services.dispatch import WorkerSnapshot


class Counters:
    """This portal's in-flight count per worker and its short exclusions of failed workers."""

    def __init__(self) -> None:
        self._in_flight: defaultdict[int, int] = defaultdict(int)
        # worker id → (until, the registration it failed under): a worker that registers again
        # (its process restarted) is a new process, asked at once.
        self._excluded: dict[int, tuple[float, datetime | None]] = {}

    def acquire(self, worker_id: int) -> None:
        self._in_flight[worker_id] += 1

    def release(self, worker_id: int) -> None:
        """Drop the count by one; it never goes below zero."""
        self._in_flight[worker_id] = max(0, self._in_flight[worker_id] - 1)

    def in_flight(self, worker_id: int) -> int:
        return self._in_flight.get(worker_id, 0)

    def exclude(self, worker: WorkerSnapshot) -> None:
        """Keep a worker that just failed out of dispatch for a short while, or until it registers again."""
        seconds = float(getattr(settings, "GATEWAY_EXCLUDE_SECONDS", 10.0))
        self._excluded[worker.id] = (time.monotonic() + seconds, worker.registered_at)

    def is_excluded(self, worker_id: int) -> bool:
        entry = self._excluded.get(worker_id)
        if entry is None:
            return False
        if entry[0] <= time.monotonic():
            del self._excluded[worker_id]
            return False
        return True

    def with_local_counts(self, candidates: list[WorkerSnapshot], skip: set[int]) -> list[WorkerSnapshot]:
        """Candidates not skipped nor excluded, each carrying this portal's in-flight count."""
        return [
            replace(c, local_in_flight=self._in_flight.get(c.id, 0))
            for c in candidates
            if c.id not in skip and not self._excludes(c)
        ]

    def _excludes(self, worker: WorkerSnapshot) -> bool:
        entry = self._excluded.get(worker.id)
        if entry is not None and entry[1] != worker.registered_at:
            del self._excluded[worker.id]  # registered again since it failed: a new process
        return self.is_excluded(worker.id)

    def forget_exclusions(self) -> None:
        """Let every excluded worker be asked again."""
        self._excluded.clear()
