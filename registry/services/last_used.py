"""`last_used_at` bookkeeping for API keys and app credentials, off the request path."""

from __future__ import annotations

import time

from django.db.models import Model
from django.utils import timezone

# How often, at most, one process writes `last_used_at` for the same row.
LAST_USED_INTERVAL = 60.0


class LastUsedThrottle:
    """Say when a row's `last_used_at` is due for a write: at most once per interval per row."""

    def __init__(self, interval: float = LAST_USED_INTERVAL) -> None:
        self.interval = interval
        self._written: dict[int, float] = {}

    def due(self, row_id: int) -> bool:
        now = time.monotonic()
        if now - self._written.get(row_id, -self.interval) < self.interval:
            return False
        self._written[row_id] = now
        return True

    def clear(self) -> None:
        self._written.clear()


def touch_last_used(*, model: type[Model], row_id: int) -> None:
    """Set `last_used_at` to now on one row of `model`."""
    model._default_manager.filter(pk=row_id).update(last_used_at=timezone.now())
