"""One usage record per request: the database holds the rule, writers lean on it, the migration makes room.

Runs on SQLite and, in scripts/test's second pass, on PostgreSQL: the insert
that ignores a duplicate is INSERT OR IGNORE on one and ON CONFLICT DO
NOTHING on the other.
"""

from __future__ import annotations

import threading

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.migrations.executor import MigrationExecutor

from registry.models import UsageRecord
from registry.services.usage import UsageEntry, record_usage_batch, write_batch

BEFORE = [("registry", "0007_queue")]
AFTER = [("registry", "0008_usage_request_id_unique")]


def entry(request_id: str, completion_tokens: int = 1) -> UsageEntry:
    return UsageEntry(
        request_id=request_id,
        source="api",
        endpoint="chat/completions",
        model_name="m",
        completion_tokens=completion_tokens,
    )


def stored() -> dict[str, int]:
    """Request id → how many records it has."""
    counts: dict[str, int] = {}
    for request_id in UsageRecord.objects.values_list("request_id", flat=True):
        counts[request_id] = counts.get(request_id, 0) + 1
    return counts


@pytest.mark.django_db
def test_the_database_refuses_a_second_record_for_a_request_but_not_for_records_without_an_id():
    UsageRecord.objects.create(request_id="once", model_name="m")
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageRecord.objects.create(request_id="once", model_name="m")
    UsageRecord.objects.create(request_id="", model_name="m")
    UsageRecord.objects.create(request_id="", model_name="m")
    assert stored() == {"once": 1, "": 2}


@pytest.mark.django_db
def test_a_batch_with_stored_and_repeated_ids_writes_each_new_request_once_in_one_statement(
    django_assert_num_queries,
):
    record_usage_batch(entries=[entry("old", completion_tokens=7)])
    batch = [entry("old", completion_tokens=99), entry("new"), entry("new", completion_tokens=99)]
    with django_assert_num_queries(1):
        record_usage_batch(entries=batch)
    assert stored() == {"old": 1, "new": 1}
    # The first one written wins; a copy never overwrites it.
    assert UsageRecord.objects.get(request_id="old").completion_tokens == 7
    assert UsageRecord.objects.get(request_id="new").completion_tokens == 1


@pytest.mark.django_db(transaction=True)
def test_writers_racing_with_the_same_batch_store_each_request_once():
    """Two portals writing one claimed stream batch at once (each its own thread and connection)."""
    batch = [entry(f"race-{i}") for i in range(50)]
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            start.wait(timeout=10)
            write_batch(list(batch))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert stored() == {f"race-{i}": 1 for i in range(50)}


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_the_first_record_of_each_request_and_drops_its_copies():
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps.get_model("registry", "UsageRecord")
    for request_id, tokens in [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("b", 5), ("c", 6), ("", 7), ("", 8)]:
        old.objects.create(request_id=request_id, model_name="m", completion_tokens=tokens)

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())  # whatever else was unapplied with 0008

    kept = sorted(UsageRecord.objects.values_list("request_id", "completion_tokens"))
    assert kept == [("", 7), ("", 8), ("a", 1), ("b", 2), ("c", 6)]
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageRecord.objects.create(request_id="a", model_name="m")
