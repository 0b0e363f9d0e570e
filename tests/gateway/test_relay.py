"""The relay against a fake upstream: dispatch, failover, error mapping, usage records."""

from __future__ import annotations

import asyncio
import json
import time

import httpx2
import pytest
from django.utils import timezone

from portal.gateway import relay
from portal.gateway.gateway import current
from portal.gateway.tasks import drain
from registry.models import UsageRecord
from tests.gateway.conftest import add_worker, chat_result, chunk, sse

pytestmark = pytest.mark.django_db(transaction=True)
CALLER = relay.Caller(source="api")
BODY = {"model": "tiny-alias", "messages": [{"role": "user", "content": "hello"}]}


async def test_chat_completion_resolves_alias_and_fills_model_defaults(served_model, upstream):
    await sync(add_worker, served_model, "w1")
    seen = upstream(lambda r: httpx2.Response(200, json=chat_result()))
    result = await relay.chat_completion(dict(BODY), caller=CALLER, request_id="r1")
    assert result["choices"][0]["message"]["content"] == "hi"
    sent = json.loads(seen[0].content)
    assert sent["model"] == "tiny"
    assert sent["max_tokens"] == 5
    assert sent["stream"] is False
    assert seen[0].headers["X-Request-Id"] == "r1"
    assert str(seen[0].url) == "http://w1:9000/v1/chat/completions"
    await current().usage.flush()
    record = await UsageRecord.objects.aget(request_id="r1")
    assert (record.prompt_tokens, record.completion_tokens, record.status) == (3, 2, "ok")


async def test_unknown_model_is_404_in_openai_shape(served_model, upstream):
    with pytest.raises(relay.GatewayError) as info:
        await relay.chat_completion({**BODY, "model": "nope"}, caller=CALLER)
    assert info.value.status_code == 404
    assert info.value.to_openai()["error"]["param"] == "model"


async def test_bad_sampling_field_is_400_naming_the_field(served_model, upstream):
    with pytest.raises(relay.GatewayError) as info:
        await relay.chat_completion({**BODY, "temperature": 9}, caller=CALLER)
    assert (info.value.status_code, info.value.param) == (400, "temperature")


async def test_no_online_worker_is_503_with_retry_after(served_model, upstream):
    with pytest.raises(relay.GatewayError) as info:
        await relay.chat_completion(dict(BODY), caller=CALLER)
    assert info.value.status_code == 503
    assert info.value.retry_after


async def test_refused_connection_fails_over_and_excludes_the_dead_worker(served_model, upstream):
    await sync(add_worker, served_model, "dead")
    await sync(add_worker, served_model, "alive")

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.host == "dead":
            raise httpx2.ConnectError("refused", request=request)
        return httpx2.Response(200, json=chat_result())

    seen = upstream(handler)
    # Dispatch is a lottery: send until it has drawn the dead worker once (each request is served).
    for _ in range(100):
        await relay.chat_completion(dict(BODY), caller=CALLER)
        if any(request.url.host == "dead" for request in seen):
            break
    dead_id = (await sync(lambda: served_model.workers.get(identity="dead"))).id
    assert current().counters.is_excluded(dead_id)
    assert current().counters.in_flight(dead_id) == 0


async def test_an_excluded_worker_that_registers_again_is_asked_at_once(served_model, upstream, settings):
    """Its exclusion was for the process that failed: a restarted worker takes requests before it ends."""
    settings.WORKER_CACHE_SECONDS = 0  # the portal sees the new registration at its next request
    dead = await sync(add_worker, served_model, "dead")
    await sync(add_worker, served_model, "alive")
    restarted = False

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.host == "dead" and not restarted:
            raise httpx2.ConnectError("refused", request=request)
        return httpx2.Response(200, json=chat_result())

    seen = upstream(handler)
    for _ in range(100):  # until the lottery has drawn the dead worker once
        await relay.chat_completion(dict(BODY), caller=CALLER)
        if any(request.url.host == "dead" for request in seen):
            break
    assert current().counters.is_excluded(dead.id)
    for _ in range(20):  # still excluded: every request goes to the other worker
        await relay.chat_completion(dict(BODY), caller=CALLER)
    assert sum(request.url.host == "dead" for request in seen) == 1

    restarted = True
    await sync(lambda: type(dead).objects.filter(pk=dead.pk).update(registered_at=timezone.now()))
    for _ in range(100):
        await relay.chat_completion(dict(BODY), caller=CALLER)
        if sum(request.url.host == "dead" for request in seen) > 1:
            break
    assert sum(request.url.host == "dead" for request in seen) > 1
    assert not current().counters.is_excluded(dead.id)


async def test_worker_400_is_passed_through_without_failover(served_model, upstream):
    await sync(add_worker, served_model, "w1")
    error = {
        "error": {"message": "too long", "type": "invalid_request_error", "param": "messages", "code": None}
    }
    seen = upstream(lambda r: httpx2.Response(400, json=error))
    with pytest.raises(relay.GatewayError) as info:
        await relay.chat_completion(dict(BODY), caller=CALLER)
    assert (info.value.status_code, info.value.param, len(seen)) == (400, "messages", 1)


async def test_stream_yields_chunks_and_hides_usage_unless_asked(served_model, upstream):
    await sync(add_worker, served_model, "w1")
    body = sse(chunk("a"), chunk("b"), chunk(None, {"prompt_tokens": 3, "completion_tokens": 2}))
    seen = upstream(lambda r: httpx2.Response(200, content=body))
    stream = await relay.stream_chat_completion(dict(BODY), caller=CALLER, request_id="s1")
    chunks = [c async for c in stream]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["a", "b"]
    assert stream.usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert stream.worker_identity == "w1"
    assert stream.time_to_first_token_ms is not None
    assert json.loads(seen[0].content)["stream_options"] == {"include_usage": True}
    await current().usage.flush()
    record = await UsageRecord.objects.aget(request_id="s1")
    assert (record.completion_tokens, record.status) == (2, "ok")


class _TrailingBytes(httpx2.AsyncByteStream):
    """A worker's stream whose last bytes come `stall` seconds after [DONE]; notes if they were read."""

    def __init__(self, events: bytes, stall: float = 0.0) -> None:
        self.parts = [events, b": end of stream\n\n"]
        self.stall = stall
        self.read_to_end = False

    async def __aiter__(self):
        yield self.parts[0]
        await asyncio.sleep(self.stall)
        yield self.parts[1]
        self.read_to_end = True


class _Reads(httpx2.AsyncByteStream):
    """A worker's stream delivered in the given reads."""

    def __init__(self, *reads: bytes) -> None:
        self.reads = reads

    async def __aiter__(self):
        for part in self.reads:
            yield part


async def test_events_one_read_completes_reach_the_client_in_one_write(served_model, upstream):
    await sync(add_worker, served_model, "w1")
    events = sse(chunk("a"), chunk("b"), chunk("c")).replace(b"\n", b"\r\n")  # CRLF line ends too
    cut = events.index(b'"b"') + 1  # a read that ends inside an event
    upstream(lambda r: httpx2.Response(200, stream=_Reads(events[:cut], events[cut:])))
    stream = await relay.stream_chat_completion(dict(BODY), caller=CALLER)
    writes = [e async for e in stream.sse()]
    assert writes[0] == sse(chunk("a"), done=False)
    assert writes[1] == sse(chunk("b"), chunk("c"), done=False)
    assert writes[2:] == [b"data: [DONE]\n\n"]


async def test_finished_stream_reads_the_worker_response_to_its_end(served_model, upstream):
    # httpx2 drops (instead of pooling) a connection whose response was closed unread.
    await sync(add_worker, served_model, "w1")
    worker_stream = _TrailingBytes(sse(chunk("a")))
    upstream(lambda r: httpx2.Response(200, stream=worker_stream))
    stream = await relay.stream_chat_completion(dict(BODY), caller=CALLER)
    events = [e async for e in stream.sse()]
    assert events[-1] == b"data: [DONE]\n\n"
    assert worker_stream.read_to_end


async def test_upstream_stalling_after_done_still_ends_the_stream_cleanly(served_model, upstream):
    await sync(add_worker, served_model, "w1")
    worker_stream = _TrailingBytes(sse(chunk("a")), stall=30)
    upstream(lambda r: httpx2.Response(200, stream=worker_stream))
    stream = await relay.stream_chat_completion(dict(BODY), caller=CALLER)
    started = time.monotonic()
    events = [e async for e in stream.sse()]
    assert time.monotonic() - started < 5
    assert events[-1] == b"data: [DONE]\n\n"
    assert not any(b'"error"' in e for e in events)
    assert not worker_stream.read_to_end


async def test_stream_broken_after_first_chunk_ends_with_an_error_chunk(served_model, upstream):
    await sync(add_worker, served_model, "w1")
    upstream(lambda r: httpx2.Response(200, content=sse(chunk("a"), done=False)))
    stream = await relay.stream_chat_completion(
        {**BODY, "stream_options": {"include_usage": True}}, caller=CALLER
    )
    events = [e async for e in stream.sse()]
    assert events[0].startswith(b'data: {"id"')
    assert b'"error"' in events[1]
    assert events[-1] == b"data: [DONE]\n\n"


async def test_stream_closed_early_records_cancelled_and_aborts(served_model, upstream):
    worker = await sync(add_worker, served_model, "w1")
    seen = upstream(
        lambda r: (
            httpx2.Response(200, content=sse(chunk("a"), chunk("b")))
            if r.url.path.endswith("completions")
            else httpx2.Response(200, json={"aborted": True})
        )
    )
    stream = await relay.stream_chat_completion(dict(BODY), caller=CALLER, request_id="c1")
    async for _ in stream:
        break
    await stream.aclose()
    assert current().counters.in_flight(worker.id) == 0
    await drain()
    await current().usage.flush()
    record = await UsageRecord.objects.aget(request_id="c1")
    assert record.status == "cancelled"
    assert any(r.url.path == "/abort/c1" for r in seen)


async def sync(fn, *args):
    from asgiref.sync import sync_to_async

    return await sync_to_async(fn)(*args)
