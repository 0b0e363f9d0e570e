"""CSV exports of the usage page's filtered rows: raw records, and the daily rollup.

Rows are read in pages by keyset (a filter on the last row's sort key, not an
OFFSET), each page one query, and written as they come. Under ASGI each page
is one hop to the sync thread; an async view would have to do the same, and
Django would otherwise buffer a sync iterator whole before sending a byte.

A stream always ends: the range is at most MAX_DAYS (the form), the keyset
only moves forward, and an error once the headers are out (too late for a
status code) ends the file with an INCOMPLETE line instead of leaving the
download open for ever, as daphne does when a streamed body raises.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Q, QuerySet
from django.db.models.functions import TruncDate
from django.http import HttpRequest, StreamingHttpResponse

from portal.console.usage.forms import UsageFilters
from portal.console.usage.selectors import raw_rows, rollup_rows, unrolled_days
from registry.models import UsageRollupDay
from registry.services.rollups import usage_aggregates

logger = logging.getLogger(__name__)

PAGE = 2000
# The last line of an export an error cut short.
INCOMPLETE = "# INCOMPLETE: an error stopped this export here; the portal's log says why"
NAMES = ("api_key__prefix", "api_key__name", "app_credential__app_id", "user__username", "team__name")
RECORD_FIELDS = (
    "id", "created_at", "request_id", "source", "endpoint", "model_name", "api_key_id", *NAMES[:2],
    "app_credential_id", NAMES[2], "user_id", NAMES[3], "team_id", NAMES[4], "worker__identity",
    "prompt_tokens", "completion_tokens", "time_to_first_token_ms", "total_time_ms", "status", "status_code",
    "error",
)  # fmt: skip
RECORD_HEADER = (
    "id", "created_at", "request_id", "source", "endpoint", "model", "api_key_id", "key_prefix", "key_name",
    "app_credential_id", "app_id", "user_id", "username", "team_id", "team", "worker", "prompt_tokens",
    "completion_tokens", "ttft_ms", "total_time_ms", "status", "status_code", "error",
)  # fmt: skip
DAILY_GROUP = (
    "day", "source", "model_name", "api_key_id", *NAMES[:2], "app_credential_id", NAMES[2], "user_id",
    NAMES[3], "team_id", NAMES[4],
)  # fmt: skip
DAILY_COUNTS = ("requests", "ok", "errors", "cancelled", "prompt_tokens", "completion_tokens")
SUMS = ("ttft_ms_sum", "ttft_count", "total_time_ms_sum", "total_time_count")
DAILY_HEADER = (
    "day", "state", "source", "model", "api_key_id", "key_prefix", "key_name", "app_credential_id", "app_id",
    "user_id", "username", "team_id", "team", *DAILY_COUNTS, "avg_ttft_ms", "avg_total_time_ms",
)  # fmt: skip
# A spreadsheet runs a cell that starts with one of these as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

Page = Callable[[Any], tuple[list[list[Any]], Any]]


class _Echo:
    """A file for csv.writer that hands each line back instead of storing it."""

    def write(self, value: str) -> str:
        return value


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return "" if value is None else value


def _lines(rows: list[list[Any]]) -> str:
    writer = csv.writer(_Echo())
    return "".join(writer.writerow([_cell(v) for v in row]) for row in rows)


def _sync(header: tuple[str, ...], page: Page) -> Iterator[str]:
    yield _lines([list(header)])
    after: Any = None
    try:
        while True:
            rows, after = page(after)
            if not rows:
                return
            yield _lines(rows)
    except Exception:
        logger.exception("usage export: stopped after %r", after)
        yield _lines([[INCOMPLETE]])


async def _async(header: tuple[str, ...], page: Page) -> AsyncIterator[str]:
    yield _lines([list(header)])
    after: Any = None
    try:
        while True:
            rows, after = await sync_to_async(page)(after)
            if not rows:
                return
            yield _lines(rows)
    except Exception:
        logger.exception("usage export: stopped after %r", after)
        yield _lines([[INCOMPLETE]])


def csv_response(
    request: HttpRequest, *, name: str, header: tuple[str, ...], page: Page
) -> StreamingHttpResponse:
    """Stream `page`'s pages as CSV, with one thread hop per page under ASGI."""
    content = _async(header, page) if isinstance(request, ASGIRequest) else _sync(header, page)
    return StreamingHttpResponse(
        content,
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def record_pages(filters: UsageFilters) -> Page:
    """Pages of the filtered raw records, oldest id first."""
    rows = raw_rows(filters, filters.days).order_by("id")

    def page(after: int | None) -> tuple[list[list[Any]], int | None]:
        chunk = rows.filter(id__gt=after) if after is not None else rows
        found = list(chunk.values_list(*RECORD_FIELDS)[:PAGE])
        if not found:
            return [], after
        return [_record_line(row) for row in found], found[-1][0]

    return page


def _record_line(row: tuple[Any, ...]) -> list[Any]:
    return [value.isoformat() if n == 1 else value for n, value in enumerate(row)]


def daily_pages(filters: UsageFilters) -> Page:
    """Pages of the filtered daily rollup (day, then id), then the live days aggregated from raw records."""
    states = dict(
        UsageRollupDay.objects.filter(day__gte=filters.start, day__lte=filters.end).values_list(
            "day", "final"
        )
    )
    rolled = rollup_rows(filters).order_by("day", "id")
    live_days = unrolled_days(filters)

    def page(after: tuple[Any, int] | str | None) -> tuple[list[list[Any]], Any]:
        if after == "live":
            return [], after
        chunk = rolled
        if isinstance(after, tuple):
            day, pk = after
            chunk = rolled.filter(Q(day__gt=day) | Q(day=day, id__gt=pk))
        found = list(chunk.values("id", *DAILY_GROUP, *DAILY_COUNTS, *SUMS)[:PAGE])
        if found:
            lines = [_daily_line(row, "final" if states.get(row["day"]) else "provisional") for row in found]
            return lines, (found[-1]["day"], found[-1]["id"])
        return [_daily_line(row, "live") for row in _live(filters, live_days)], "live"

    return page


def _live(filters: UsageFilters, days: list[Any]) -> list[dict[str, Any]]:
    """The days not rolled up yet, grouped as the rollup would group them."""
    rows: QuerySet[Any] = raw_rows(filters, days).annotate(day=TruncDate("created_at", tzinfo=UTC))
    return list(
        rows.values(*DAILY_GROUP).annotate(**usage_aggregates()).order_by("day", "model_name", "source")
    )


def _daily_line(row: dict[str, Any], state: str) -> list[Any]:
    ttft = row["ttft_ms_sum"] / row["ttft_count"] if row["ttft_count"] else None
    total = row["total_time_ms_sum"] / row["total_time_count"] if row["total_time_count"] else None
    return [
        row["day"].isoformat(), state, row["source"], row["model_name"], row["api_key_id"], row[NAMES[0]],
        row[NAMES[1]], row["app_credential_id"], row[NAMES[2]], row["user_id"], row[NAMES[3]],
        row["team_id"], row[NAMES[4]], *(row[c] or 0 for c in DAILY_COUNTS),
        None if ttft is None else round(ttft, 1), None if total is None else round(total, 1),
    ]  # fmt: skip
