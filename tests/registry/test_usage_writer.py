"""Usage records are queued and written in batches, off the request path."""

import pytest

from registry.models import UsageRecord
from registry.services.usage import UsageEntry, flush_pending, schedule_usage

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
        schedule_usage(entry=entry(f"r{i}", completion_tokens=i))
    assert await UsageRecord.objects.acount() == 0  # nothing written on the request path
    await flush_pending()
    written = {r async for r in UsageRecord.objects.values_list("request_id", flat=True)}
    assert written == {f"r{i}" for i in range(5)}
    record = await UsageRecord.objects.aget(request_id="r3")
    assert record.completion_tokens == 3


async def test_a_bad_record_does_not_lose_the_rest_of_its_batch():
    schedule_usage(entry=entry("good-1"))
    schedule_usage(entry=entry("dangling", worker_id=987654))  # a worker deleted meanwhile
    schedule_usage(entry=entry("good-2"))
    await flush_pending()
    written = {r async for r in UsageRecord.objects.values_list("request_id", flat=True)}
    assert written == {"good-1", "good-2"}
