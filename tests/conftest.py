"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import pytest
import redis
from asgiref.sync import SyncToAsync
from django.db import connections

from portal.gateway.gateway import Gateway, install
from registry.services import usage
from tests.processes import TEST_REDIS_URL

DATABASE_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database-tests-only",
        action="store_true",
        help="Run only the tests that use the database (the second backend's pass in scripts/test).",
    )


# How long a file's tests take, by their marks: a cluster of processes, then real models.
FILE_WEIGHTS = {"cluster": 2, "slow": 1}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Heaviest files first; with --database-tests-only, only the tests that use the database.

    pytest-xdist (scripts/test: --dist loadfile --no-loadscope-reorder) hands files out in
    this order: a file that starts a cluster or a real model, handed out last, would run
    alone while the other worker has nothing left to do.
    """
    weights: dict[Path, int] = {}
    for item in items:
        weight = max((FILE_WEIGHTS.get(mark.name, 0) for mark in item.iter_markers()), default=0)
        weights[item.path] = max(weight, weights.get(item.path, 0))
    items.sort(key=lambda item: -weights[item.path])  # stable: the files' own order within a weight
    if not config.getoption("--database-tests-only"):
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        uses_database = item.get_closest_marker("django_db") or DATABASE_FIXTURES & set(
            getattr(item, "fixturenames", ())
        )
        (kept if uses_database else dropped).append(item)
    config.hook.pytest_deselected(items=dropped)
    items[:] = kept


@pytest.fixture(scope="session", autouse=True)
def _close_thread_connections(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Close the connections held by the sync and usage-writer threads before the test database is dropped.

    Connections are per thread; PostgreSQL refuses to drop a database that
    other sessions still use.
    """
    yield
    executors: list[Executor] = [SyncToAsync.single_thread_executor, usage._WRITER]
    with django_db_blocker.unblock():
        for executor in executors:
            executor.submit(connections.close_all).result(timeout=10)


@pytest.fixture(autouse=True)
def gateway() -> Iterator[Gateway]:
    """A fresh gateway for each test: empty counters, limit stores, queues, usage buffer and lookups.

    A test that ends before its usage is flushed would otherwise leave records
    for the next test's flush, pointing at rows its database no longer has.
    """
    yield install(Gateway())
    install(Gateway())


@pytest.fixture
def redis_url() -> str:
    """An empty Redis database (TEST_REDIS_URL, 15 on 127.0.0.1 by default); skipped when none answers."""
    url = TEST_REDIS_URL
    try:
        redis.Redis.from_url(url).flushdb()
    except redis.ConnectionError:
        pytest.skip("Redis is not answering at 127.0.0.1:6379")
    return url
