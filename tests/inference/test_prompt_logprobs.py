"""Prompt logprobs (`echo` with `logprobs`): each prompt token's logprob equals a direct forward pass."""

from __future__ import annotations

import math

import pytest
import torch

from inference.engines.base import GenerationRequest
from inference.sampling import SamplingParams
from tests.inference.conftest import collect

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_prompt_logprobs_equal_a_direct_forward_pass(chat_engine, reference_model):
    ids = chat_engine.tokenize("The capital of France is Paris.")
    entries = await chat_engine.prompt_logprobs(ids, 3)
    with torch.inference_mode():
        expected = torch.log_softmax(reference_model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    assert [e.token_id for e in entries] == ids
    assert math.isnan(entries[0].logprob)
    for position, entry in enumerate(entries[1:]):
        assert entry.logprob == pytest.approx(float(expected[position, ids[position + 1]]), abs=1e-3)
        assert len(entry.top) == 3
        assert entry.top[0][1] == pytest.approx(float(expected[position].max()), abs=1e-3)


async def test_the_generation_after_a_scored_prompt_joins_from_that_pass_and_answers_the_same(chat_engine):
    # echo with logprobs scores the prompt alone; its generation must not run the prompt again.
    ids = chat_engine.tokenize("The capital of France is")
    params = SamplingParams(max_tokens=4, temperature=0, logprobs=1, ignore_eos=True)
    _, fresh = await collect(chat_engine, GenerationRequest("fresh", ids, params))
    await chat_engine.prompt_logprobs(ids, 1)
    assert chat_engine.batcher.kept.take(list(ids)) is not None  # kept for the generation that follows
    await chat_engine.prompt_logprobs(ids, 1)
    batcher, calls = chat_engine.batcher, []
    forward = batcher._forward

    def counted(tokens: torch.Tensor, mask: torch.Tensor, cache: object) -> torch.Tensor:
        calls.append(tuple(tokens.shape))
        return forward(tokens, mask, cache)

    batcher._forward = counted
    try:
        _, joined = await collect(chat_engine, GenerationRequest("joined", ids, params))
    finally:
        del batcher._forward
    assert calls == [(1, 1)] * 3  # a step for each token after the first: no prefill
    assert [d.token_ids for d in joined] == [d.token_ids for d in fresh]
    for ours, theirs in zip(joined, fresh, strict=True):
        assert [e.logprob for e in ours.logprobs] == pytest.approx(
            [e.logprob for e in theirs.logprobs], abs=1e-4
        )
    assert chat_engine.batcher.kept.take(list(ids)) is None  # taken once
