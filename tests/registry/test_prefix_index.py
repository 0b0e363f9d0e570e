"""The cache-aware policy's prefix index and its bounded-load choice (pure, no database)."""

from __future__ import annotations

import random

from registry.services.prefix_index import BLOCK_CHARS, PrefixIndex, choose, prompt_text, route

SYSTEM = "You are the help desk of a small library. " * 20  # 840 characters
RNG = random.Random(7)


def test_a_conversations_next_turn_matches_the_worker_that_served_it():
    index = PrefixIndex()
    turn1 = SYSTEM + "user: When do you open?"
    index.record(turn1, 1)
    index.record("Another system prompt entirely. " * 30, 2)
    turn2 = turn1 + "assistant: At nine.user: And close?"
    found = index.matches(turn2)
    assert set(found) == {1}
    assert found[1] == len(turn1) // BLOCK_CHARS * BLOCK_CHARS


def test_a_shared_prefix_matches_every_worker_sent_it_as_deep_as_each_went():
    index = PrefixIndex()
    index.record(SYSTEM + "user: a question about opening hours", 1)
    index.record(SYSTEM + "user: a question about late fees, rather longer than the other" * 3, 2)
    found = index.matches(SYSTEM + "user: a question about late fees, rather longer than the other" * 3)
    assert found[2] > found[1] >= len(SYSTEM) // BLOCK_CHARS * BLOCK_CHARS - BLOCK_CHARS
    assert index.matches("x" + SYSTEM) == {}  # a different first character: nothing in common


def test_the_index_is_bounded_and_forgets_the_oldest_prefixes_first():
    index = PrefixIndex(max_blocks=20)
    index.record("a" * BLOCK_CHARS * 15, 1)
    index.record("b" * BLOCK_CHARS * 15, 2)
    assert len(index) == 20
    assert index.matches("b" * BLOCK_CHARS * 15) == {2: 15 * BLOCK_CHARS}
    assert index.matches("a" * BLOCK_CHARS * 15) == {1: 5 * BLOCK_CHARS}  # its first blocks stayed


def test_a_worker_that_leaves_leaves_the_index():
    index = PrefixIndex()
    index.record(SYSTEM, 1)
    index.record(SYSTEM, 2)
    index.keep_only([2])
    assert set(index.matches(SYSTEM)) == {2}
    index.keep_only([])
    assert len(index) == 0


def test_the_longest_match_wins_within_the_slack_then_the_least_loaded():
    matches = {10: 640, 11: 128}
    assert choose([3, 1, 1], [10, 11, 12], matches, slack=2, rng=RNG) == 0
    assert route(10, "w10", matches) == "prefix of 640 chars on w10"
    assert choose([4, 1, 1], [10, 11, 12], matches, slack=2, rng=RNG) in (1, 2)  # 4 > 1 + 2: too loaded
    assert route(12, "w12", matches) == "least loaded (the 640-char match was busier)"
    assert choose([2, 0], [10, 11], {}, slack=2, rng=RNG) == 1
    assert route(11, "w11", {}) == "least loaded (no prefix match)"
    assert len(route(10, "w" * 500, matches)) == 200  # fits UsageRecord.route whatever the identity


def test_a_conversation_is_keyed_by_its_tools_and_messages_in_order():
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    longer = [*first, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"}]
    assert prompt_text(longer, None, ()).startswith(prompt_text(first, None, ()))
    tools = ({"type": "function", "function": {"name": "f"}},)
    assert prompt_text(first, tools, ()).startswith('[{"function"')
    assert prompt_text(None, None, ((1, 2, 3), "second")) == "1,2,3"


def test_following_the_online_workers_forgets_only_when_one_left():
    index = PrefixIndex()
    index.record(SYSTEM, 1)
    index.follow([1])
    index.follow([1, 2])  # a newcomer: nothing to forget
    assert set(index.matches(SYSTEM)) == {1}
    index.follow([2])  # worker 1 went offline: its cache is gone, or going
    assert index.matches(SYSTEM) == {}
