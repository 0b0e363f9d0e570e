"""The opt-in request log: who keeps one, writing the bodies beside their usage records, and pruning them.

A team or an API key switches it on (`RequestLogSwitch`); the gateway then
carries the request's bodies on its usage entry (`portal/gateway/request_log.py`)
and they are written here, in the usage writer's batch, after the records.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

from django.utils import timezone

from registry.models import RequestLog, RequestLogSwitch, UsageRecord

if TYPE_CHECKING:
    from registry.services.usage import UsageEntry

PRUNE_BATCH = 1000


def log_days(*owners: RequestLogSwitch | None) -> int:
    """Days a request of these owners (its key, its team) is logged for: the longest switched on; 0: off."""
    return max((owner.log_days for owner in owners if owner is not None), default=0)


def write_request_logs(*, entries: Iterable[UsageEntry]) -> None:
    """Write the logs of entries whose usage records were just written (one lookup, one INSERT).

    A record the batch skipped as already written keeps the log it has (the
    one-to-one link refuses a second).
    """
    logged = {entry.request_id: entry for entry in entries if entry.log is not None}
    records = UsageRecord.objects.filter(request_id__in=list(logged)).values_list("request_id", "id")
    rows = []
    for request_id, record_id in records:
        entry = logged[request_id]
        assert entry.log is not None
        created = entry.created_at or timezone.now()
        rows.append(
            RequestLog(
                usage_record_id=record_id,
                created_at=created,
                expires_at=created + timedelta(days=int(entry.log["days"])),
                request_body=entry.log["request"],
                response_text=entry.log["response"],
            )
        )
    RequestLog.objects.bulk_create(rows, ignore_conflicts=True)


def prune_request_logs() -> int:
    """Delete the logs whose days are over, in batches; return how many (the hourly django-q2 job)."""
    now = timezone.now()
    deleted = 0
    while ids := list(
        RequestLog.objects.filter(expires_at__lte=now).values_list("id", flat=True)[:PRUNE_BATCH]
    ):
        deleted += RequestLog.objects.filter(id__in=ids).delete()[0]
    return deleted
