"""Prompt prefixes reused across requests: the block cache alone, then the transformers engine (SmolLM2)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from inference.engines.base import GenerationRequest
from inference.engines.prefix_cache import BLOCK_TOKENS, PrefixCache
from inference.sampling import SamplingParams
from tests.inference.conftest import collect

LAYERS, HEADS, DIM = 2, 1, 4
BLOCK_BYTES = LAYERS * 2 * HEADS * BLOCK_TOKENS * DIM * 4  # float32


def batch_cache(rows: list[list[int]]) -> SimpleNamespace:
    """A left-padded cache whose every K and V value is the token id at that column (0 for padding)."""
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width)
    for at, row in enumerate(rows):
        ids[at, width - len(row) :] = torch.tensor(row, dtype=torch.float32)
    values = ids[:, None, :, None].expand(len(rows), HEADS, width, DIM).clone()
    return SimpleNamespace(layers=[SimpleNamespace(keys=values, values=-values) for _ in range(LAYERS)])


def tokens(start: int, count: int) -> list[int]:
    return list(range(start, start + count))


def test_a_stored_prompt_is_found_by_whole_blocks_leaving_one_token_to_run():
    cache = PrefixCache(budget_bytes=100 * BLOCK_BYTES)
    prompt = tokens(1, 3 * BLOCK_TOKENS + 5)
    cache.store(prompt, batch_cache([tokens(900, 7), prompt]), row=1)  # row 1, behind padding
    assert len(cache) == 3
    reused, layers = cache.lookup([*prompt, 7, 8])
    assert reused == 3 * BLOCK_TOKENS
    assert len(layers) == LAYERS
    keys, values = layers[0]
    assert keys.shape == (1, HEADS, reused, DIM)
    assert keys[0, 0, :, 0].tolist() == prompt[:reused]  # each column holds its own token's K
    assert values[0, 0, :, 0].tolist() == [-t for t in prompt[:reused]]
    exact = tokens(1, 2 * BLOCK_TOKENS)  # a prompt of whole blocks keeps its last token to run
    assert cache.lookup(exact)[0] == BLOCK_TOKENS


def test_a_different_token_anywhere_before_ends_the_match():
    cache = PrefixCache(budget_bytes=100 * BLOCK_BYTES)
    prompt = tokens(1, 4 * BLOCK_TOKENS)
    cache.store(prompt, batch_cache([prompt]), row=0)
    changed = list(prompt)
    changed[BLOCK_TOKENS + 3] = 5000
    assert cache.lookup([*changed, 1])[0] == BLOCK_TOKENS
    assert cache.lookup([5000, *prompt])[0] == 0


def test_the_budget_evicts_least_recently_used_and_the_deepest_blocks_first():
    cache = PrefixCache(budget_bytes=4 * BLOCK_BYTES)
    first, second = tokens(1, 3 * BLOCK_TOKENS), tokens(1000, 2 * BLOCK_TOKENS)
    cache.store(first, batch_cache([first]), row=0)
    cache.store(second, batch_cache([second]), row=0)
    assert len(cache) == 4
    assert cache.bytes == 4 * BLOCK_BYTES
    assert cache.lookup([*first, 1])[0] == 2 * BLOCK_TOKENS  # its first two are still whole
    third = tokens(2000, BLOCK_TOKENS)
    cache.store(third, batch_cache([third]), row=0)
    assert cache.lookup([*second, 1])[0] == BLOCK_TOKENS  # second is now the oldest: its tail went
    assert cache.lookup([*first, 1])[0] == 2 * BLOCK_TOKENS


def test_a_zero_budget_keeps_nothing():
    cache = PrefixCache(budget_bytes=0)
    prompt = tokens(1, 2 * BLOCK_TOKENS)
    cache.store(prompt, batch_cache([prompt]), row=0)
    assert len(cache) == 0
    assert cache.lookup([*prompt, 1]) == (0, [])


# -- the transformers engine on SmolLM2 (float32) -------------------------------------------------

SYSTEM = (
    "You are the help desk of a small library. Opening hours: Monday to Friday 9 to 18, "
    "Saturday 10 to 14, closed on Sunday. Members may borrow up to five books for three weeks. "
    "Late returns cost ten cents a day. Answer in one short sentence. " * 3
)


def greedy_reference(reference_model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = reference_model.generate(
            torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0
        )
    return out[0, len(prompt_ids) :].tolist()


def request(engine, request_id: str, messages: list[dict[str, str]]) -> GenerationRequest:
    ids = engine.tokenize(engine.render_chat(messages))
    return GenerationRequest(request_id, ids, SamplingParams(temperature=0, max_tokens=12))


def turn(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.mark.asyncio(loop_scope="module")
async def test_a_shared_system_prompt_is_reused_and_answers_stay_the_same(chat_engine, reference_model):
    before = chat_engine.batcher.reused_tokens
    first = request(chat_engine, "pc-first", turn("When do you open on Saturday?"))
    _, deltas = await collect(chat_engine, first)
    second = request(chat_engine, "pc-second", turn("How long may I keep a book?"))
    _, again = await collect(chat_engine, second)
    usage = again[-1].usage
    assert usage is not None
    shared = next(
        i
        for i, (a, b) in enumerate(zip(first.prompt_token_ids, second.prompt_token_ids, strict=False))
        if a != b
    )
    assert usage.cached_tokens == shared // BLOCK_TOKENS * BLOCK_TOKENS > 150
    assert chat_engine.batcher.reused_tokens - before >= usage.cached_tokens
    for req, out in ((first, deltas), (second, again)):
        ids = [t for d in out for t in d.token_ids]
        assert ids == greedy_reference(reference_model, req.prompt_token_ids, len(ids))


@pytest.mark.asyncio(loop_scope="module")
async def test_the_next_turn_reuses_the_answer_too(chat_engine, reference_model):
    messages = turn("Is the library open on Sunday?")
    _, deltas = await collect(chat_engine, request(chat_engine, "pc-turn1", messages))
    answer = "".join(d.text for d in deltas)
    follow = [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": "And Monday?"}]
    first_turn = request(chat_engine, "pc-probe", messages).prompt_token_ids
    nxt = request(chat_engine, "pc-turn2", follow)
    _, out = await collect(chat_engine, nxt)
    assert out[-1].usage is not None
    assert out[-1].usage.cached_tokens > len(first_turn)  # past the first prompt: into its answer
    ids = [t for d in out for t in d.token_ids]
    assert ids == greedy_reference(reference_model, nxt.prompt_token_ids, len(ids))
