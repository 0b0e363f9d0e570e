"""Usage records are queued and written in batches, off the request path, and never dropped."""

import pytest
from django.db import OperationalError

from portal.gateway.gateway import current
from registry.models import UsageRecord
from registry.services import usage
from registry.services.usage import UsageEntry

pytestmark = pytest.mark.django_db(transaction=True)


def entry(request_id: str, *, completion_tokens: int = 0, worker_id: int | None = None) -> UsageEntry:
    return UsageEntry(
        request_id=request_id,
        source="api",
        endpoint="chat/completions",
        model_name="m",
        completion_tokens=completion_tokens,
        worker_id=worker_id,
    )


async def test_queued_records_are_written_together():
    for i in range(5):
        current().usage.schedule(entry(f"r{i}", completion_tokens=i))
    assert await UsageRecord.objects.acount() == 0  # nothing written on the request path
    await current().usage.flush()
    written = {r async for r in UsageRecord.objects.values_list("request_id", flat=True)}
    assert written == {f"r{i}" for i in range(5)}
    record = await UsageRecord.objects.aget(request_id="r3")
    assert record.completion_tokens == 3


async def test_a_record_of_a_deleted_worker_is_kept_without_it_and_its_batch_with_it():
    current().usage.schedule(entry("good-1"))
    current().usage.schedule(entry("dangling", worker_id=987654))  # a worker deleted meanwhile
    current().usage.schedule(entry("good-2"))
    await current().usage.flush()
    written = {r async for r in UsageRecord.objects.values_list("request_id", flat=True)}
    assert written == {"good-1", "dangling", "good-2"}
    assert (await UsageRecord.objects.aget(request_id="dangling")).worker_id is None


async def test_a_batch_waits_out_a_database_that_is_away_and_loses_nothing(monkeypatch, settings):
    settings.USAGE_FLUSH_SECONDS = 0.01
    real, calls = usage.record_usage_batch, []

    def away_twice(*, entries):
        calls.append(len(entries))
        if len(calls) <= 2:
            raise OperationalError("the database is restarting")
        real(entries=entries)

    monkeypatch.setattr(usage, "record_usage_batch", away_twice)
    for i in range(3):
        current().usage.schedule(entry(f"kept-{i}"))
    await current().usage.flush()
    written = [r async for r in UsageRecord.objects.values_list("request_id", flat=True)]
    assert sorted(written) == ["kept-0", "kept-1", "kept-2"]  # each once, after two refusals
    assert calls == [3, 3, 3]


async def test_a_request_id_already_stored_is_not_written_again():
    await UsageRecord.objects.acreate(request_id="twice", model_name="m")
    current().usage.schedule(entry("twice"))
    current().usage.schedule(entry("once"))
    await current().usage.flush()
    assert await UsageRecord.objects.filter(request_id="twice").acount() == 1
    assert await UsageRecord.objects.filter(request_id="once").acount() == 1


async def test_the_record_keeps_the_time_its_request_finished():
    finished = entry("timed")
    current().usage.schedule(finished)
    assert finished.created_at is not None
    await current().usage.flush()
    assert (await UsageRecord.objects.aget(request_id="timed")).created_at == finished.created_at
