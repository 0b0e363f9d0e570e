"""Prompt logprobs (`echo` with `logprobs`): each prompt token's logprob equals a direct forward pass."""

from __future__ import annotations

import math

import pytest
import torch

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
