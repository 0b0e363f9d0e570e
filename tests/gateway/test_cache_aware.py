"""The cache-aware policy through the gateway, against a fake upstream (gateway logic only)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import httpx2
import pytest
from asgiref.sync import sync_to_async

from portal.gateway import relay
from portal.gateway.gateway import current
from registry.models import DispatchPolicy, ServedModel, UsageRecord
from registry.services.dispatch import WorkerSnapshot, choose_worker, with_prefill_workers
from tests.gateway.conftest import add_worker, chat_result, chunk, sse

pytestmark = pytest.mark.django_db(transaction=True)
CALLER = relay.Caller(source="api")
SYSTEM = "You are the help desk of a small library; answer in one sentence. " * 12


def snap(worker_id: int, **kwargs: Any) -> WorkerSnapshot:
    return WorkerSnapshot(
        id=worker_id,
        identity=f"w{worker_id}",
        address=f"http://w{worker_id}",
        max_concurrency=4,
        max_queue=4,
        **kwargs,
    )


def test_the_policy_takes_the_longest_match_unless_it_carries_over_two_more_requests():
    workers = [snap(1, in_flight=2), snap(2), snap(3)]
    assert choose_worker(workers, DispatchPolicy.CACHE_AWARE, matches={1: 640, 2: 64}).id == 1
    assert choose_worker([snap(1, in_flight=3), snap(2, in_flight=1)], "cache_aware", matches={1: 64}).id == 1
    busier = [snap(1, in_flight=4), snap(2, in_flight=1), snap(3, in_flight=1)]
    assert choose_worker(busier, DispatchPolicy.CACHE_AWARE, matches={1: 640}).id in (2, 3)


def test_a_decode_worker_asks_the_prefill_worker_holding_the_prefix_first():
    decode = snap(1, role="decode")
    prefills = [
        snap(2, role="prefill", in_flight=2),
        snap(3, role="prefill"),
        snap(4, role="prefill", in_flight=1),
    ]
    paired = with_prefill_workers(decode, [decode, *prefills], matches={2: 640, 4: 128})
    assert paired.prefill_from == ("http://w2", "http://w4", "http://w3")
    busy = [snap(2, role="prefill", in_flight=3), snap(3, role="prefill")]  # 3 > 0 + 2: by load
    assert with_prefill_workers(decode, [decode, *busy], matches={2: 640}).prefill_from == (
        "http://w3",
        "http://w2",
    )


def answer(request: httpx2.Request) -> httpx2.Response:
    result = chat_result()
    result["usage"] = {**result["usage"], "prompt_tokens_details": {"cached_tokens": 2}}
    return httpx2.Response(200, json=result)


async def test_a_conversation_stays_on_its_worker_and_each_record_says_why(upstream):
    model = await ServedModel.objects.acreate(name="tiny", dispatch_policy=DispatchPolicy.CACHE_AWARE)
    for name in ("w1", "w2"):
        await sync_to_async(add_worker)(model, name)
    seen = upstream(answer)
    messages = [{"role": "system", "content": SYSTEM}]
    for turn in range(3):
        messages.append({"role": "user", "content": f"Question {turn}?"})
        body = {"model": "tiny", "messages": list(messages), "max_tokens": 4}
        await relay.chat_completion(body, caller=CALLER, request_id=f"turn-{turn}")
        messages.append({"role": "assistant", "content": "hi"})
    assert len({request.url.host for request in seen}) == 1
    await current().usage.flush()
    records = [r async for r in UsageRecord.objects.order_by("request_id")]
    host = seen[0].url.host
    assert records[0].route == "least loaded (no prefix match)"
    assert [r.route.split(" on ")[-1] for r in records[1:]] == [host, host]
    assert records[1].route.startswith("prefix of ")
    assert [r.cached_tokens for r in records] == [2, 2, 2]  # the worker's prompt_tokens_details


async def test_a_streamed_answer_records_its_cached_tokens(upstream):
    model = await ServedModel.objects.acreate(name="tiny", dispatch_policy=DispatchPolicy.LEAST_INFLIGHT)
    await sync_to_async(add_worker)(model, "w1")
    usage = {
        "prompt_tokens": 40,
        "completion_tokens": 1,
        "total_tokens": 41,
        "prompt_tokens_details": {"cached_tokens": 32},
    }
    upstream(lambda request: httpx2.Response(200, content=sse(chunk("hi"), chunk(usage=usage))))
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    stream = await current().stream(
        await current().admit("chat/completions", CALLER, body, stream=True, request_id="s1")
    )
    events = [chunk async for chunk in stream]
    assert events[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}
    await current().usage.flush()
    record = await UsageRecord.objects.aget(request_id="s1")
    assert (record.prompt_tokens, record.cached_tokens, record.route) == (40, 32, "")


async def eight_at_once(upstream, policy: str, messages: list[dict[str, str]]) -> list[str]:
    """Send 8 requests together to two workers, each held until all 8 arrived; the hosts they reached."""
    model = await ServedModel.objects.acreate(name="tiny", dispatch_policy=policy)
    for name in ("w1", "w2"):
        await sync_to_async(add_worker)(model, name)
    arrived: list[str] = []
    everyone = asyncio.Event()

    async def held(request: httpx2.Request) -> httpx2.Response:
        arrived.append(request.url.host)
        if len(arrived) == 8:
            everyone.set()
        await everyone.wait()  # every request is in flight at once
        return httpx2.Response(200, json=chat_result())

    upstream(held)
    body = {"model": "tiny", "messages": messages}
    sends = (relay.chat_completion(dict(body), caller=CALLER, request_id=f"r{i}") for i in range(8))
    await asyncio.wait_for(asyncio.gather(*sends), timeout=30)
    return arrived


async def test_requests_arriving_together_see_each_others_choices(upstream):
    arrived = await eight_at_once(
        upstream, DispatchPolicy.LEAST_INFLIGHT, [{"role": "user", "content": "hi"}]
    )
    assert sorted(Counter(arrived).values()) == [4, 4]


async def test_a_shared_prompt_arriving_at_once_is_matched_and_still_spread(upstream):
    ask = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
    arrived = await eight_at_once(upstream, DispatchPolicy.CACHE_AWARE, ask)
    assert min(Counter(arrived).values()) >= 3  # within the bounded load: neither worker takes it all
    await current().usage.flush()
    routes = [r async for r in UsageRecord.objects.values_list("route", flat=True)]
    assert routes.count("least loaded (no prefix match)") == 1  # the others saw the first one's choice
