"""The relay's bookkeeping and failover against a fake upstream (gateway logic only).

Usage of a cancelled stream from the worker's abort answer (or estimated
without one), the limit settled with it, the worker token and the portal's
request ids on every call, failover on worker faults only, and usage figures
coerced whatever an upstream sends.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from asgiref.sync import sync_to_async

from portal.gateway import relay
from portal.gateway.gateway import current
from portal.gateway.limit_stores import Quota
from portal.gateway.limits import estimate, estimate_prompt_tokens, reserve
from portal.gateway.tasks import drain
from registry.models import UsageRecord, WorkerKind
from registry.services import dispatch
from tests.gateway.conftest import add_worker, chat_result, chunk, sse

pytestmark = pytest.mark.django_db(transaction=True)
BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}
ERROR_400 = {"error": {"message": "bad", "type": "invalid_request_error", "param": "messages", "code": None}}
ERROR_500 = {"error": {"message": "engine broke", "type": "server_error", "param": None, "code": None}}


def worker_answer(stream_body: bytes, abort: httpx2.Response) -> Any:
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.startswith("/abort/"):
            return abort
        return httpx2.Response(200, content=stream_body)

    return handler


async def read_then_leave(caller: relay.Caller, n: int, request_id: str = "cut") -> None:
    stream = await relay.stream_chat_completion(dict(BODY), caller=caller, request_id=request_id)
    got = 0
    async for _ in stream:
        got += 1
        if got == n:
            break
    await stream.aclose()
    await drain()  # the abort, then the record and the settling, run in the background
    await current().usage.flush()


async def test_stream_left_after_n_tokens_is_recorded_and_counted_with_the_workers_usage(
    served_model, upstream
):
    await sync_to_async(add_worker)(served_model, "w1")
    usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    abort = httpx2.Response(200, json={"id": "cut", "aborted": True, "usage": usage})
    seen = upstream(worker_answer(sse(chunk("a"), chunk("b"), chunk("c")), abort))
    quota = Quota("key:t1", tokens_per_minute=1000, max_in_flight=1)
    reservation = await reserve(current().limits, quota, estimate(BODY, {"max_tokens": 5}))
    assert current().limits.memory.in_flight("key:t1") == 1

    await read_then_leave(relay.Caller(source="api", reservation=reservation), 2)

    record = await UsageRecord.objects.aget(request_id="cut")
    assert (record.status, record.prompt_tokens, record.completion_tokens) == ("cancelled", 7, 2)
    # Read in the reservation's own minute: the test may run across a minute boundary.
    assert current().limits.memory.used("key:t1", window=reservation.window) == 9
    assert current().limits.memory.in_flight("key:t1") == 0
    assert [r.url.path for r in seen] == ["/v1/chat/completions", "/abort/cut"]


async def test_without_usage_from_the_abort_relayed_chunks_and_the_prompt_estimate_count(
    served_model, upstream
):
    await sync_to_async(add_worker)(served_model, "w1")
    gone = httpx2.Response(404, json={"error": {"message": "no such request", "type": "x"}})
    upstream(worker_answer(sse(chunk("a"), chunk("b"), chunk("c")), gone))
    reservation = await reserve(current().limits, Quota("key:t2", tokens_per_minute=1000), estimate(BODY))

    await read_then_leave(relay.Caller(source="api", reservation=reservation), 2)

    record = await UsageRecord.objects.aget(request_id="cut")
    prompt = estimate_prompt_tokens({**BODY, "max_tokens": 5})
    assert (record.prompt_tokens, record.completion_tokens) == (prompt, 2)
    assert current().limits.memory.used("key:t2", window=reservation.window) == prompt + 2


async def test_a_remote_endpoint_is_not_called_to_abort_and_its_stream_is_estimated(served_model, upstream):
    await sync_to_async(add_worker)(served_model, "remote", kind=WorkerKind.REMOTE, remote_api_key="rk")
    seen = upstream(worker_answer(sse(chunk("a"), chunk("b")), httpx2.Response(500)))

    await read_then_leave(relay.Caller(source="api"), 1)

    record = await UsageRecord.objects.aget(request_id="cut")
    assert (record.status, record.completion_tokens) == ("cancelled", 1)
    assert [r.url.path for r in seen] == ["/chat/completions"]
    assert seen[0].headers["Authorization"] == "Bearer rk"


async def test_worker_token_and_the_portals_request_id_go_with_every_call(served_model, upstream, settings):
    settings.WORKER_TOKEN = "shared-worker-secret"
    await sync_to_async(add_worker)(served_model, "w1")
    seen = upstream(worker_answer(sse(chunk("a"), chunk("b")), httpx2.Response(200, json={"aborted": True})))

    await read_then_leave(relay.Caller(source="api"), 1, request_id="portal-made-id")

    assert [r.url.path for r in seen] == ["/v1/chat/completions", "/abort/portal-made-id"]
    assert {r.headers["Authorization"] for r in seen} == {"Bearer shared-worker-secret"}
    assert seen[0].headers["X-Request-Id"] == "portal-made-id"


@pytest.mark.parametrize("status", [400, 422, 429])
async def test_a_client_error_is_never_retried_elsewhere_nor_excludes_the_worker(
    served_model, upstream, status
):
    workers = [await sync_to_async(add_worker)(served_model, name) for name in ("w1", "w2")]
    seen = upstream(lambda r: httpx2.Response(status, json=ERROR_400))
    with pytest.raises(relay.GatewayError) as info:
        await relay.chat_completion(dict(BODY), caller=relay.Caller())
    assert (info.value.status_code, len(seen)) == (status, 1)
    assert not any(current().counters.is_excluded(w.id) for w in workers)


async def test_a_5xx_from_two_workers_blames_the_request_and_excludes_neither(served_model, upstream):
    workers = [await sync_to_async(add_worker)(served_model, name) for name in ("w1", "w2")]
    seen = upstream(lambda r: httpx2.Response(500, json=ERROR_500))
    with pytest.raises(relay.GatewayError) as info:
        await relay.chat_completion(dict(BODY), caller=relay.Caller())
    assert (info.value.status_code, len(seen)) == (502, 2)
    assert not any(current().counters.is_excluded(w.id) for w in workers)
    upstream(lambda r: httpx2.Response(200, json=chat_result()))
    assert (await relay.chat_completion(dict(BODY), caller=relay.Caller()))["choices"]


async def test_a_5xx_then_a_success_elsewhere_excludes_the_failing_worker(served_model, upstream):
    bad = await sync_to_async(add_worker)(served_model, "bad")
    good = await sync_to_async(add_worker)(served_model, "good")
    current().counters.acquire(good.id)  # least in flight tries `bad` first

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.host == "bad":
            return httpx2.Response(500, json=ERROR_500)
        return httpx2.Response(200, json=chat_result())

    seen = upstream(handler)
    await relay.chat_completion(dict(BODY), caller=relay.Caller())
    assert [r.url.host for r in seen] == ["bad", "good"]
    assert current().counters.is_excluded(bad.id)
    assert not current().counters.is_excluded(good.id)


async def test_a_busy_worker_is_skipped_but_not_excluded(served_model, upstream):
    busy = await sync_to_async(add_worker)(served_model, "busy")
    free = await sync_to_async(add_worker)(served_model, "free")
    current().counters.acquire(free.id)

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.host == "busy":
            return httpx2.Response(503, json={"error": {"message": "full", "type": "overloaded"}})
        return httpx2.Response(200, json=chat_result())

    seen = upstream(handler)
    await relay.chat_completion(dict(BODY), caller=relay.Caller())
    assert [r.url.host for r in seen] == ["busy", "free"]
    assert not current().counters.is_excluded(busy.id)


async def test_a_worker_5xx_that_blames_the_request_is_a_400_without_failover(served_model, upstream):
    for name in ("w1", "w2"):
        await sync_to_async(add_worker)(served_model, name)
    seen = upstream(lambda r: httpx2.Response(500, json=ERROR_400))
    with pytest.raises(relay.GatewayError) as info:
        await relay.chat_completion(dict(BODY), caller=relay.Caller())
    assert (info.value.status_code, info.value.param, len(seen)) == (400, "messages", 1)


HOSTILE = {"prompt_tokens": "<img src=x onerror=alert(1)>", "completion_tokens": -5, "total_tokens": [1]}


async def test_hostile_usage_figures_are_stored_and_shown_as_zero(served_model, upstream):
    await sync_to_async(add_worker)(served_model, "w1")
    upstream(lambda r: httpx2.Response(200, json={**chat_result(), "usage": HOSTILE}))
    await relay.chat_completion(dict(BODY), caller=relay.Caller(), request_id="u1")
    upstream(lambda r: httpx2.Response(200, content=sse(chunk("a"), chunk(None, HOSTILE))))
    stream = await relay.stream_chat_completion(dict(BODY), caller=relay.Caller(), request_id="u2")
    assert [c async for c in stream]
    assert stream.usage == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    await current().usage.flush()
    rows = UsageRecord.objects.filter(request_id__in=["u1", "u2"])
    assert [(r.prompt_tokens, r.completion_tokens) async for r in rows] == [(0, 0), (0, 0)]


@pytest.mark.parametrize("name", ["m" * 201, "tiny\n", "bell\x07", " ", "tab\tname"])
async def test_a_malformed_model_name_is_a_400_and_never_looked_up_or_cached(served_model, upstream, name):
    seen = upstream(lambda r: httpx2.Response(200, json=chat_result()))
    with pytest.raises(relay.GatewayError) as info:
        await relay.chat_completion({**BODY, "model": name}, caller=relay.Caller(), request_id="bad-name")
    assert (info.value.status_code, info.value.param) == (400, "model")
    assert name not in dispatch._model_cache
    assert not seen
    await current().usage.flush()
    record = await UsageRecord.objects.aget(request_id="bad-name")
    assert record.status_code == 400  # written, its model name cut to the column's length


async def test_an_answer_that_is_not_a_json_object_is_a_worker_failure(served_model, upstream):
    await sync_to_async(add_worker)(served_model, "w1")
    upstream(lambda r: httpx2.Response(200, content=json.dumps([1, 2]).encode()))
    with pytest.raises(relay.GatewayError) as info:
        await relay.chat_completion(dict(BODY), caller=relay.Caller())
    assert info.value.status_code == 502
