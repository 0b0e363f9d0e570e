"""The replay guard: an accepted signature is inserted once; a second insert is a replay.

go-infer only checks the timestamp window; within it we also refuse an exact
replay of an accepted signature. The signatures live in a database table
(`SeenSignature`, unique on app id and signature hash), with and without Redis:

- it is shared by every portal copy, which all use the same database;
- it is durable: a Redis cache evicts keys under memory pressure (the usual
  `allkeys-lru` policy) and may lose them all on a restart, and a local-memory
  cache is per process and holds 300 entries, so a captured request became
  acceptable again after 400 others;
- one code path and one set of semantics to test, whichever back end is set.

The cost is one indexed INSERT per signed request (one hop to Django's sync
thread), small beside the inference the request asks for. The insert is atomic:
of two identical requests racing, the unique constraint lets exactly one in.

Rows are swept once they are older than twice SIGNED_TIMESTAMP_WINDOW (by then
the request's own timestamp is refused first): by the django-q2 schedule
`portal.signed.replay.sweep_seen_signatures`, and opportunistically by each
process at most once a minute after an insert.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from portal.signed.envelope import Code, SignedApiError
from portal.signed.models import SeenSignature

# Seconds between two opportunistic sweeps by one process.
SWEEP_INTERVAL = 60.0


class SweepClock:
    """Say when this process should sweep again: at most once per interval."""

    def __init__(self, interval: float = SWEEP_INTERVAL) -> None:
        self.interval = interval
        self._last = -interval

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True


_sweeps = SweepClock()


def retention() -> timedelta:
    """How long a signature is remembered: twice the window covers a timestamp at either edge."""
    return timedelta(seconds=2 * int(settings.SIGNED_TIMESTAMP_WINDOW))


def remember_signature(*, app_id: str, replay_key: str) -> bool:
    """Record an accepted signature; return False when it was recorded before (a replay)."""
    now = timezone.now()
    try:
        with transaction.atomic():
            SeenSignature.objects.create(app_id=app_id, replay_key=replay_key, seen_at=now)
    except IntegrityError:
        return False
    if _sweeps.due():
        sweep_seen_signatures(now=now)
    return True


def sweep_seen_signatures(*, now: datetime | None = None) -> int:
    """Delete the signatures older than the retention; return how many (run by qcluster too)."""
    cutoff = (now or timezone.now()) - retention()
    deleted, _ = SeenSignature.objects.filter(seen_at__lt=cutoff).delete()
    return deleted


async def refuse_replay(*, app_id: str, replay_key: str) -> None:
    """Remember the signature, or raise 9804 when it was accepted before inside its window."""
    if not await database_sync_to_async(remember_signature)(app_id=app_id, replay_key=replay_key):
        raise SignedApiError(Code.REPLAYED, "this signed request was already accepted (replay)")
