"""The checks behind `GET /health`: the database and, when REDIS_URL is set, Redis.

Each check reads only (`SELECT 1`, `PING`) and is bounded by TIMEOUT_SECONDS,
so a dependency that does not answer turns /health into a 503 in time instead
of hanging the load balancer's probe. The checks run concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection, transaction
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: `error` names what failed ("" when it passed)."""

    ms: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def as_dict(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"ok": self.ok, "ms": self.ms}
        if self.error:
            answer["error"] = self.error
        return answer


def _select_one() -> None:
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            cursor.execute("SELECT 1")
            return
        # LOCAL ends with the transaction: the persistent connection keeps its own timeout.
        with transaction.atomic():
            cursor.execute(f"SET LOCAL statement_timeout = {int(TIMEOUT_SECONDS * 1000)}")
            cursor.execute("SELECT 1")


async def check_database() -> None:
    # One hop to Django's sync thread, with its connection housekeeping (a dead persistent
    # connection is replaced).
    await database_sync_to_async(_select_one)()


async def check_redis(url: str) -> None:
    # A fresh connection, without retries: the probe asks whether Redis answers now.
    client = redis.asyncio.Redis.from_url(
        url,
        socket_connect_timeout=TIMEOUT_SECONDS,
        socket_timeout=TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        # redis-py types the sync and asyncio clients' commands alike.
        await cast(Awaitable[bool], client.ping())
    finally:
        await client.aclose()


async def _timed(name: str, check: Coroutine[Any, Any, None]) -> CheckResult:
    started = time.perf_counter()
    error = ""
    try:
        async with asyncio.timeout(TIMEOUT_SECONDS):
            await check
    except TimeoutError:
        error = f"no answer within {TIMEOUT_SECONDS:g} s"
        logger.warning("health: the %s check failed: %s", name, error)
    except Exception as exc:  # any failure of the dependency is an unhealthy answer, not a 500
        # Only the type goes out: /health is public, and the message may name hosts and users.
        error = type(exc).__name__
        logger.warning("health: the %s check failed: %s: %s", name, error, exc)
    return CheckResult(ms=round((time.perf_counter() - started) * 1000, 1), error=error)


async def run_checks() -> dict[str, CheckResult]:
    """Every check's result by name: "database", and "redis" when REDIS_URL is set (read at call time)."""
    checks = {"database": check_database()}
    if settings.REDIS_URL:
        checks["redis"] = check_redis(settings.REDIS_URL)
    results = await asyncio.gather(*(_timed(name, check) for name, check in checks.items()))
    return dict(zip(checks, results, strict=True))
