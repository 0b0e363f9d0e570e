"""The shared usage buffer on the real Redis (TEST_REDIS_URL): a record is in the stream when its
response may end, every portal writes the stream, and no entry is lost or written twice when
a portal dies between reading and acknowledging, or when the database is away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
from asgiref.sync import sync_to_async
from django.db import OperationalError

from portal.gateway.gateway import current
from registry.models import UsageRecord
from registry.services import usage, usage_stream
from registry.services.usage import UsageEntry
from registry.services.usage_stream import GROUP, STREAM

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def _writer_stopped_after_each_test() -> AsyncIterator[None]:
    """Stop this process's stream writer inside the test's own loop, before the database is flushed."""
    yield
    await current().close()


@pytest.fixture
def stream(redis_url: str, settings) -> redis.Redis:
    settings.REDIS_URL = redis_url
    return redis.Redis.from_url(redis_url)


def entry(request_id: str, tokens: int = 1) -> UsageEntry:
    return UsageEntry(request_id, "api", "chat/completions", "m", completion_tokens=tokens)


async def schedule(record: UsageEntry) -> None:
    recording = current().usage.schedule(record)
    assert recording is not None  # with REDIS_URL, the stream
    await recording


async def stored() -> list[str]:
    return sorted([r async for r in UsageRecord.objects.values_list("request_id", flat=True)])


async def test_a_record_is_in_the_stream_once_its_task_is_done(stream):
    recording = current().usage.schedule(entry("r1", tokens=7))
    assert recording is not None
    await current().usage.stream().stop_writer()  # keep it in the stream to look at it
    await recording
    [(_, fields)] = stream.xrange(STREAM)
    assert usage_stream.decode(fields).completion_tokens == 7
    await current().usage.flush()
    assert await stored() == ["r1"]
    assert stream.xlen(STREAM) == 0  # acknowledged and deleted once written


async def test_the_writer_takes_up_records_without_a_flush(stream):
    for i in range(3):
        await schedule(entry(f"w{i}"))
    for _ in range(100):
        if await stored() == ["w0", "w1", "w2"]:
            break
        await asyncio.sleep(0.05)
    assert await stored() == ["w0", "w1", "w2"]


async def test_a_dead_portals_unacknowledged_records_are_claimed_and_written_once(stream, settings):
    settings.USAGE_CLAIM_SECONDS = 0
    stream.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for name in ("read-not-written", "written-not-acknowledged"):
        stream.xadd(STREAM, usage_stream.encode(entry(name)))
    # A portal read both, wrote one to the database, and was killed before acknowledging either.
    stream.xreadgroup(GROUP, "dead-portal", {STREAM: ">"})
    await UsageRecord.objects.acreate(request_id="written-not-acknowledged", model_name="m")
    await current().usage.stream().drain()
    assert await stored() == ["read-not-written", "written-not-acknowledged"]
    assert stream.xpending(STREAM, GROUP)["pending"] == 0


async def test_entries_wait_in_the_stream_while_the_database_is_away(stream, monkeypatch):
    real, calls = usage.write_batch, []

    def away_at_first(entries):
        calls.append([e.request_id for e in entries])
        if len(calls) == 1:
            raise OperationalError("the database is restarting")
        real(entries)

    monkeypatch.setattr(usage, "write_batch_async", sync_to_async(away_at_first, thread_sensitive=False))
    for i in range(4):
        await schedule(entry(f"a{i}"))
    for _ in range(100):  # the writer retries after half a second
        if len(await stored()) == 4:
            break
        await asyncio.sleep(0.05)
    assert await stored() == ["a0", "a1", "a2", "a3"]
    assert calls[1][: len(calls[0])] == calls[0]  # the refused batch came back first, whole
    assert stream.xpending(STREAM, GROUP)["pending"] == 0


async def test_a_record_stays_in_memory_when_redis_is_away(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    await schedule(entry("m1"))
    assert [e.request_id for e in current().usage.buffer] == ["m1"]
    await current().usage.write_buffer()
    assert await stored() == ["m1"]
