"""Usage records: one row per request through the portal, written off the request path."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass

from asgiref.sync import sync_to_async

from registry.models import UsageRecord, UsageStatus

logger = logging.getLogger(__name__)

# Strong references: a task nobody holds may be garbage-collected before it runs.
_pending: set[asyncio.Task[None]] = set()


@dataclass
class UsageEntry:
    """The fields of a usage record, gathered while the request runs."""

    request_id: str
    source: str
    endpoint: str
    model_name: str
    api_key_id: int | None = None
    app_credential_id: int | None = None
    user_id: int | None = None
    served_model_id: int | None = None
    worker_id: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token_ms: float | None = None
    total_time_ms: float | None = None
    status: str = UsageStatus.OK
    status_code: int = 200
    error: str = ""


def record_usage(*, entry: UsageEntry) -> UsageRecord:
    """Write one usage record."""
    fields = asdict(entry)
    fields["error"] = fields["error"][:2000]
    return UsageRecord.objects.create(**fields)


def _write(entry: UsageEntry) -> None:
    try:
        record_usage(entry=entry)
    except Exception:
        # A lost usage row must not turn into a failed request; the log keeps the trace.
        logger.exception("usage record for request %s not written", entry.request_id)


def schedule_usage(*, entry: UsageEntry) -> None:
    """Write the record in the background: the response never waits for the database."""
    task = asyncio.get_running_loop().create_task(sync_to_async(_write)(entry))
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def flush_pending() -> None:
    """Wait for records still being written (tests, shutdown)."""
    while _pending:
        await asyncio.gather(*list(_pending), return_exceptions=True)
