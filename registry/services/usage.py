"""Usage records: one row per request through the portal, written off the request path."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections

from registry.models import UsageRecord, UsageStatus

logger = logging.getLogger(__name__)


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
    return UsageRecord.objects.create(**_fields(entry))


def record_usage_batch(*, entries: list[UsageEntry]) -> None:
    """Write many usage records in one statement."""
    UsageRecord.objects.bulk_create([UsageRecord(**_fields(entry)) for entry in entries])


def _fields(entry: UsageEntry) -> dict:
    fields = asdict(entry)
    fields["error"] = fields["error"][:2000]
    return fields


# One thread of its own writes usage: Django's single sync thread stays free for
# the request path, and the writer keeps its own database connection.
_WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-writer")
_buffer: list[UsageEntry] = []
_flusher: asyncio.Task[None] | None = None


def _write_batch(entries: list[UsageEntry]) -> None:
    close_old_connections()  # drop a connection the database has closed since the last batch
    try:
        record_usage_batch(entries=entries)
        return
    except Exception:
        if len(entries) == 1:
            # A lost usage row must not turn into a failed request; the log keeps the trace.
            logger.exception("usage record for request %s not written", entries[0].request_id)
            return
    # One bad row (say, a worker deleted meanwhile) must not lose the others.
    for entry in entries:
        _write_batch([entry])


async def _flush_after_delay() -> None:
    await asyncio.sleep(settings.USAGE_FLUSH_SECONDS)
    while _buffer:
        batch = _buffer[:]
        _buffer.clear()
        await sync_to_async(_write_batch, thread_sensitive=False, executor=_WRITER)(batch)


def schedule_usage(*, entry: UsageEntry) -> None:
    """Queue the record; a background task writes the queue in batches every USAGE_FLUSH_SECONDS.

    The response never waits for the database, and one INSERT carries many
    records, which keeps the write load flat as traffic grows.
    """
    global _flusher
    _buffer.append(entry)
    loop = asyncio.get_running_loop()
    if _flusher is None or _flusher.done() or _flusher.get_loop() is not loop:
        _flusher = loop.create_task(_flush_after_delay())


async def flush_pending() -> None:
    """Write what is queued now (tests, shutdown)."""
    if _flusher is not None and not _flusher.done() and _flusher.get_loop() is asyncio.get_running_loop():
        await _flusher
    if _buffer:
        batch = _buffer[:]
        _buffer.clear()
        await sync_to_async(_write_batch, thread_sensitive=False, executor=_WRITER)(batch)
