"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from django.db import connections

from registry.services import usage


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
