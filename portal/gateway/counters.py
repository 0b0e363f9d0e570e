"""In-memory figures of this portal: requests in flight per worker, workers excluded after a failure.

They complement the heartbeat figures, which are up to one heartbeat old:
during a burst, this portal's own count is the fresher one.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace

from django.conf import settings

from registry.services.dispatch import WorkerSnapshot

_in_flight: defaultdict[int, int] = defaultdict(int)
_excluded_until: dict[int, float] = {}


def acquire(worker_id: int) -> None:
    _in_flight[worker_id] += 1


def release(worker_id: int) -> None:
    """Drop the count by one; it never goes below zero."""
    _in_flight[worker_id] = max(0, _in_flight[worker_id] - 1)


def in_flight(worker_id: int) -> int:
    return _in_flight.get(worker_id, 0)


def exclude(worker_id: int) -> None:
    """Keep a worker that just failed out of dispatch for a short while."""
    seconds = float(getattr(settings, "GATEWAY_EXCLUDE_SECONDS", 10.0))
    _excluded_until[worker_id] = time.monotonic() + seconds


def is_excluded(worker_id: int) -> bool:
    until = _excluded_until.get(worker_id)
    if until is None:
        return False
    if until <= time.monotonic():
        del _excluded_until[worker_id]
        return False
    return True


def with_local_counts(candidates: list[WorkerSnapshot], skip: set[int]) -> list[WorkerSnapshot]:
    """Candidates not skipped nor excluded, each carrying this portal's in-flight count."""
    return [
        replace(c, local_in_flight=_in_flight.get(c.id, 0))
        for c in candidates
        if c.id not in skip and not is_excluded(c.id)
    ]


def reset() -> None:
    """Forget every count and exclusion (tests)."""
    _in_flight.clear()
    _excluded_until.clear()
