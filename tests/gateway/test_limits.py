"""The limiter: reservations before dispatch, settling after, in memory and in the real Redis.

Redis faults (a refused port here; a stalled and a stopped redis-server in
test_limits_redis_faults.py) fall back to this process's share of each limit.
"""

from __future__ import annotations

import asyncio
import json
import time
import unicodedata

import pytest
import redis
from prometheus_client import REGISTRY

from portal.gateway import limit_stores
from portal.gateway.gateway import current
from portal.gateway.limit_stores import MemoryStore, Quota, RedisStore
from portal.gateway.limits import (
    CHAT_TOKENS,
    MESSAGE_TOKENS,
    NORMAL_GROWTH,
    SEGMENT_TOKENS,
    TOOLS_TOKENS,
    LimitExceeded,
    TokenEstimate,
    estimate,
    estimate_prompt_tokens,
    reserve,
    text_tokens,
)
from portal.gateway.tasks import drain
from tests.limit_fixtures import tokens_counted
from tests.processes import TEST_REDIS_URL

pytest_plugins = ["tests.limit_fixtures"]

REDIS_URL = TEST_REDIS_URL
REFUSED_URL = "redis://127.0.0.1:1/0"  # nothing listens: every connect is refused at once


def cost(tokens: int) -> TokenEstimate:
    return TokenEstimate(prompt=tokens)


async def used_tokens(subject: str, backend: str) -> int:
    await drain()  # settling runs in the background
    if backend == "memory":
        return tokens_counted(subject)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    window = int(time.time() // limit_stores.WINDOW_SECONDS)
    counts = [client.get(RedisStore.prefix(subject) + f":tpm:{w}") for w in (window - 1, window)]
    return sum(int(str(c)) for c in counts if c is not None)


async def test_concurrent_requests_cannot_all_pass_a_tokens_per_minute_check(backend):
    quota = Quota("key:1", tokens_per_minute=100)
    outcomes = await asyncio.gather(
        *(reserve(current().limits, quota, cost(30)) for _ in range(10)), return_exceptions=True
    )
    passed = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, LimitExceeded)]
    assert (len(passed), len(refused)) == (3, 7)
    assert {r.reason for r in refused} == {"tpm"}
    assert all(0 < (r.retry_after or 0) <= 61 for r in refused)


async def test_settling_replaces_the_reservation_by_the_tokens_used(backend):
    quota = Quota("key:2", tokens_per_minute=100)
    first = await reserve(current().limits, quota, cost(90))
    with pytest.raises(LimitExceeded):
        await reserve(current().limits, quota, cost(20))
    first.settle(15)
    assert await used_tokens("key:2", backend) == 15
    await reserve(current().limits, quota, cost(80))
    assert await used_tokens("key:2", backend) == 95


async def test_a_request_larger_than_the_limit_is_refused_for_good(backend):
    with pytest.raises(LimitExceeded) as info:
        await reserve(current().limits, Quota("key:3", tokens_per_minute=100), TokenEstimate(5, 1, 200))
    assert info.value.reason == "too_large"
    assert info.value.retry_after is None
    assert "max_tokens" in info.value.message
    assert await used_tokens("key:3", backend) == 0


async def test_requests_per_minute_count_every_reservation(backend):
    quota = Quota("key:4", requests_per_minute=2)
    for _ in range(2):
        (await reserve(current().limits, quota, cost(0))).settle(0)
    with pytest.raises(LimitExceeded) as info:
        await reserve(current().limits, quota, cost(0))
    assert info.value.reason == "rpm"


async def test_in_flight_slots_are_held_until_settled(backend):
    quota = Quota("key:5", max_in_flight=2)
    first, _ = (
        await reserve(current().limits, quota, cost(0)),
        await reserve(current().limits, quota, cost(0)),
    )
    with pytest.raises(LimitExceeded) as info:
        await reserve(current().limits, quota, cost(0))
    assert (info.value.reason, info.value.retry_after) == ("in_flight", 1)
    first.settle(0)
    await drain()
    await reserve(current().limits, quota, cost(0))


async def test_a_refused_reservation_counts_nothing(backend):
    quota = Quota("key:6", requests_per_minute=5, tokens_per_minute=50, max_in_flight=1)
    held = await reserve(current().limits, quota, cost(40))
    for tokens in (5, 20):  # in flight full, then tokens too
        with pytest.raises(LimitExceeded):
            await reserve(current().limits, quota, cost(tokens))
    held.settle(40)
    await drain()
    (await reserve(current().limits, quota, cost(10))).settle(10)
    assert await used_tokens("key:6", backend) == 50


async def test_settling_twice_counts_once(backend):
    reservation = await reserve(current().limits, Quota("key:7", tokens_per_minute=100), cost(50))
    reservation.settle(10)
    reservation.settle(0)
    assert await used_tokens("key:7", backend) == 10


async def test_unlimited_quota_reserves_without_the_store(settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens: any call would fail
    reservation = await reserve(current().limits, Quota("key:8"), cost(10**9))
    reservation.settle(5)
    assert (reservation.tokens, reservation.flight_id) == (0, "")


async def test_a_refused_redis_falls_back_to_this_portals_share_of_each_limit(settings, caplog):
    settings.REDIS_URL, settings.PORTAL_COUNT = REFUSED_URL, 2
    fallbacks = REGISTRY.get_sample_value("portal_limits_fallback_total", {"door": "api"}) or 0
    quota = Quota("key:9", requests_per_minute=4, tokens_per_minute=100)
    started = time.monotonic()
    reservations = [await reserve(current().limits, quota, cost(10)) for _ in range(2)]
    with pytest.raises(LimitExceeded) as info:
        await reserve(current().limits, quota, cost(10))  # 2 requests a minute are this portal's half of 4
    assert info.value.reason == "rpm"
    assert time.monotonic() - started < 3  # a refused Redis answers at once; the margin is for load
    assert all(r.tokens == 10 for r in reservations)
    assert REGISTRY.get_sample_value("portal_limits_fallback_total", {"door": "api"}) == fallbacks + 3
    assert REGISTRY.get_sample_value("portal_limits_redis_down") == 1
    warnings = [r for r in caplog.records if "Redis failed" in r.getMessage()]
    assert len(warnings) == 1  # once a minute, not once a request
    assert "1/2" in warnings[0].getMessage()


async def test_a_request_within_the_limit_but_beyond_this_portals_share_may_retry(settings):
    settings.REDIS_URL, settings.PORTAL_COUNT = REFUSED_URL, 4
    quota = Quota("key:14", tokens_per_minute=100)
    with pytest.raises(LimitExceeded) as info:
        await reserve(current().limits, quota, cost(30))  # fits 100, not this portal's 25
    assert info.value.reason == "tpm"
    assert 0 < (info.value.retry_after or 0) <= 61
    with pytest.raises(LimitExceeded) as too_large:
        await reserve(current().limits, quota, cost(101))
    assert (too_large.value.reason, too_large.value.retry_after) == ("too_large", None)


async def test_settling_a_fallback_reservation_frees_its_slot_in_this_process(settings):
    settings.REDIS_URL = REFUSED_URL
    quota = Quota("key:15", max_in_flight=1, tokens_per_minute=100)
    held = await reserve(current().limits, quota, cost(40))
    with pytest.raises(LimitExceeded):
        await reserve(current().limits, quota, cost(1))
    held.settle(7)
    await drain()
    store = current().limits.redis(REFUSED_URL)
    assert store is not None
    assert store.fallback.used("key:15", window=held.window) == 7
    assert store.fallback.in_flight("key:15") == 0
    (await reserve(current().limits, quota, cost(1))).settle(1)


def test_memory_in_flight_entries_of_a_dead_request_expire():
    now = [1000.0]
    store = MemoryStore(clock=lambda: now[0])
    quota = Quota("key:10", max_in_flight=1)
    assert asyncio.run(store.reserve(quota, 0, "a")).outcome == "ok"
    assert asyncio.run(store.reserve(quota, 0, "b")).outcome == "in_flight"
    now[0] += limit_stores.IN_FLIGHT_LEASE_SECONDS + 1
    assert asyncio.run(store.reserve(quota, 0, "b")).outcome == "ok"


def test_memory_counts_forget_old_minutes():
    now = [60.0 * 100]
    store = MemoryStore(clock=lambda: now[0])
    quota = Quota("key:11", requests_per_minute=1)
    asyncio.run(store.reserve(quota, 0, ""))
    for minute in (101, 102, 103):
        now[0] = 60.0 * minute
        assert asyncio.run(store.reserve(quota, 0, "")).outcome == "ok"
    assert set(store._counts) == {102, 103}


async def test_redis_in_flight_entries_expire_when_their_portal_dies(redis_url, monkeypatch):
    monkeypatch.setattr(limit_stores, "IN_FLIGHT_LEASE_SECONDS", 1)
    store = RedisStore(redis_url, current().loops)
    quota = Quota("key:12", max_in_flight=1)
    assert (await store.reserve(quota, 0, "dead-portal")).outcome == "ok"
    assert (await store.reserve(quota, 0, "next")).outcome == "in_flight"
    deadline = time.monotonic() + 5
    while (await store.reserve(quota, 0, "next")).outcome != "ok":
        assert time.monotonic() < deadline, "the dead portal's slot never expired"
        await asyncio.sleep(0.1)


async def test_redis_counts_are_shared_between_portal_copies(redis_url):
    first, second = RedisStore(redis_url, current().loops), RedisStore(redis_url, current().loops)
    quota = Quota("key:13", requests_per_minute=2, tokens_per_minute=100)
    assert (await first.reserve(quota, 60, "")).outcome == "ok"
    assert (await second.reserve(quota, 60, "")).outcome == "tpm"
    assert (await second.reserve(quota, 40, "")).outcome == "ok"
    assert (await first.reserve(quota, 0, "")).outcome == "rpm"
    client = redis.Redis.from_url(redis_url)
    ttls = [int(client.ttl(k)) for k in list(client.scan_iter("portal:limits:{key:13}:*"))]  # type: ignore[arg-type]
    assert len(ttls) == 2
    assert all(0 < ttl <= 120 for ttl in ttls)


def test_a_prompts_bound_counts_bytes_specials_and_the_chat_template():
    body = {"messages": [{"role": "system", "content": "x" * 10}, {"role": "user", "content": "y" * 7}]}
    assert estimate_prompt_tokens(body) == CHAT_TOKENS + 2 * MESSAGE_TOKENS + 17
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "z" * 8}]}]}
    assert estimate_prompt_tokens(parts) == CHAT_TOKENS + MESSAGE_TOKENS + 8
    assert estimate_prompt_tokens({"prompt": [1, 2, 3]}) == 3  # token ids count exactly
    assert estimate_prompt_tokens({"prompt": "!" * 240}) == 240 + SEGMENT_TOKENS
    assert estimate_prompt_tokens({"input": ["abcd", "é"]}) == 4 + 2 + 2 * SEGMENT_TOKENS  # é: 2 bytes
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    with_tools = estimate_prompt_tokens({**parts, "tools": tools})
    assert with_tools > estimate_prompt_tokens(parts) + TOOLS_TOKENS


def test_text_bound_survives_normalisations_that_lengthen_text():
    assert text_tokens("!" * 240) == 240
    ligature = "\ufdfa"  # 3 bytes, 33 after NFKC (SentencePiece's default)
    assert text_tokens(ligature) == len(unicodedata.normalize("NFKC", ligature).encode()) == 33
    assert text_tokens("\u0958") == 6  # 3 bytes, 6 after NFC (Qwen's byte-level BPE)


def test_no_character_grows_more_than_normal_growth_in_this_pythons_unicode():
    """The bound of a text too long to normalise on the event loop rests on NORMAL_GROWTH."""
    growth = 1.0
    for code in range(0x80, 0x110000):
        if 0xD800 <= code < 0xE000:
            continue
        char = chr(code)
        normal = max(len(unicodedata.normalize(form, char).encode()) for form in ("NFC", "NFKC"))
        growth = max(growth, normal / len(char.encode()))
    assert growth <= NORMAL_GROWTH


def test_a_long_text_made_to_grow_is_bounded_without_normalising_it_all():
    text = "\ufdfa" * 1_300_000  # 3.9 MB, 42.9 million bytes in NFKC
    started = time.monotonic()
    bound = text_tokens(text)
    # Normalising all of it takes seconds; the budget is milliseconds (the margin is for a loaded machine).
    assert time.monotonic() - started < 2
    assert bound >= len(unicodedata.normalize("NFKC", text).encode())
    assert text_tokens("한") == 3


def test_a_spent_budget_normalises_nothing_and_still_bounds_the_text(monkeypatch):
    text = "\ufdfa" * 10_000
    monkeypatch.setattr("portal.gateway.limits.NORMAL_SECONDS", -1.0)
    normalised: list[str] = []
    real = unicodedata.normalize

    def spy(form: str, piece: str) -> str:
        normalised.append(piece)
        return real(form, piece)  # type: ignore[arg-type]

    monkeypatch.setattr(unicodedata, "normalize", spy)
    bound = text_tokens(text)
    assert normalised == []
    assert bound >= len(real("NFKC", text).encode())


def test_tools_count_as_written_indented_without_writing_them():
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    schema = {"type": "object", "properties": {"city": {"type": "string", "description": "Ville, é"}}}
    tools = [{"type": "function", "function": {"name": "weather", "parameters": schema}}]
    written = len(json.dumps(tools, ensure_ascii=False, indent=4).encode())
    assert (
        estimate_prompt_tokens({**chat, "tools": tools})
        >= estimate_prompt_tokens(chat) + TOOLS_TOKENS + written
    )
    deep: object = 1
    for _ in range(900):
        deep = [deep]
    hostile = [{"type": "function", "function": {"name": "f", "parameters": deep}}] * 100  # ~3 GB indented
    started = time.monotonic()
    bound = estimate_prompt_tokens({**chat, "tools": hostile})
    assert time.monotonic() - started < 2  # written indented they would be gigabytes
    assert bound > 100 * sum(4 * depth for depth in range(900))


def test_reservation_is_prompt_plus_n_times_max_tokens_with_fallbacks():
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    prompt = CHAT_TOKENS + MESSAGE_TOKENS + 2
    assert estimate({**chat, "max_tokens": 10, "n": 3}).total == prompt + 30
    assert estimate({**chat, "max_completion_tokens": 7}).total == prompt + 7
    assert estimate(chat, {"max_tokens": 9}).total == prompt + 9
    assert estimate(chat).max_tokens == 256  # inference.sampling.DEFAULT_MAX_TOKENS
    assert estimate({"prompt": ["a", "b"], "max_tokens": 4}).total == 2 + 2 * SEGMENT_TOKENS + 2 * 4
    assert estimate({"input": "abcdefgh"}).total == 8 + SEGMENT_TOKENS  # embeddings generate nothing
    assert estimate({**chat, "max_tokens": "lots", "n": True}).total == prompt + 256
    # Every candidate is generated: best_of of them; max_completion_tokens wins, as the parser reads it.
    assert estimate({**chat, "max_tokens": 10, "n": 2, "best_of": 5}).total == prompt + 50
    assert estimate({**chat, "max_tokens": 5, "max_completion_tokens": 40}).total == prompt + 40


async def test_a_prompt_alone_beyond_the_limit_is_refused_naming_its_field():
    with pytest.raises(LimitExceeded) as info:
        await reserve(
            current().limits, Quota("key:16", tokens_per_minute=100), estimate({"input": "!" * 240})
        )
    assert (info.value.reason, info.value.param, info.value.retry_after) == ("too_large", "input", None)
    assert info.value.message.startswith("This request's input may take up to 244 tokens")
