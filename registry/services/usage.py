"""Usage records: one row per request through the portal, and how a batch of them is written.

The buffers that hold records until then are `usage_writer` (this process's
memory) and `usage_stream` (Redis). A batch the database cannot take (it is
down, or restarting) raises DATABASE_AWAY for the caller to keep and retry.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.apps import apps
from django.contrib.auth import get_user_model
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    models,
)
from django.utils import timezone

from registry.models import ApiKey, AppCredential, ServedModel, UsageRecord, UsageStatus, Worker
from registry.services.request_log import write_request_logs

logger = logging.getLogger(__name__)

RETRY_SECONDS_MAX = 30.0
DATABASE_AWAY = (OperationalError, InterfaceError)  # the database, not the row: retry the batch


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
    team_id: int | None = None  # the team whose budget it spent
    served_model_id: int | None = None
    worker_id: int | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt, served by the worker's prefix cache
    completion_tokens: int = 0
    route: str = ""  # why dispatch chose the worker (cache_aware)
    time_to_first_token_ms: float | None = None
    total_time_ms: float | None = None
    streamed: bool = False
    status: str = UsageStatus.OK
    status_code: int = 200
    error: str = ""
    created_at: datetime | None = None  # when the request finished; set when it is scheduled
    # The opt-in request log's bodies ({"days", "request", "response"}); None for nearly every request.
    log: dict[str, Any] | None = None


def record_usage_batch(*, entries: list[UsageEntry]) -> None:
    """Write many usage records in one statement; the database skips request ids it already holds.

    A batch retried after a partial write, or a stream entry written by two
    portals, must not count a request twice (request ids are made by the
    portal, unique). The unique index on `request_id` decides, inside the
    INSERT (ON CONFLICT DO NOTHING, SQLite's INSERT OR IGNORE): a read first
    would let two writers both find the id missing.
    """
    UsageRecord.objects.bulk_create(
        [UsageRecord(**_fields(entry)) for entry in entries], ignore_conflicts=True
    )
    logged = [entry for entry in entries if entry.log is not None]
    if logged:
        write_request_logs(entries=logged)


def _fields(entry: UsageEntry) -> dict:
    fields = asdict(entry)
    del fields["log"]
    fields["error"] = fields["error"][:2000]
    fields["created_at"] = fields["created_at"] or timezone.now()
    return fields


def _without_dangling(entry: UsageEntry) -> UsageEntry:
    """The entry with references to rows deleted since the request (a removed worker) cleared."""
    references: dict[str, type[models.Model]] = {
        "api_key_id": ApiKey, "app_credential_id": AppCredential, "user_id": get_user_model(),
        "served_model_id": ServedModel, "worker_id": Worker, "team_id": apps.get_model("teams", "Team"),
    }  # fmt: skip
    cleared: dict[str, Any] = {
        field: None
        for field, model in references.items()
        if (pk := getattr(entry, field)) is not None and not model._default_manager.filter(pk=pk).exists()
    }
    return replace(entry, **cleared)


def write_batch(entries: list[UsageEntry]) -> None:
    """Write `entries`; raise only when the database is away (the caller keeps them and retries).

    One row the database refuses must not cost the others: the batch is then
    written row by row, a row pointing at a deleted worker or key is kept with
    that reference cleared, and only a row refused even so is logged and left.
    """
    close_old_connections()  # drop a connection the database has closed since the last batch
    try:
        record_usage_batch(entries=entries)
        return
    except DATABASE_AWAY:
        raise
    except DatabaseError:
        if len(entries) > 1:
            for entry in entries:
                write_batch([entry])
            return
    try:
        record_usage_batch(entries=[_without_dangling(entries[0])])
    except DATABASE_AWAY:
        raise
    except DatabaseError:
        logger.exception("usage record for request %s refused by the database", entries[0].request_id)


# One thread of its own writes usage: Django's single sync thread stays free for
# the request path, and the writer keeps its own database connection.
_WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-writer")
write_batch_async = sync_to_async(write_batch, thread_sensitive=False, executor=_WRITER)
