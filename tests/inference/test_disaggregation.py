"""Prefill on one engine, decode on another from the hand-off: the same tokens as on one worker.

SmolLM2 in float32 on the transformers engine. The hand-off is made and used by
the module's one engine (two workers load the same model; `tests/gateway/
test_disaggregation_live.py` runs two): what is checked is that a request
decoded from a hand-off, alone or beside a busy batch, streams exactly the
tokens of the same request run whole.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
import torch

from inference.engines import handoff
from inference.engines.base import TokenLogprob
from inference.errors import HandoffRefused
from tests.inference.conftest import chat_request, collect

in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the engine fixture lives in the module's loop
QUESTION = "What is the capital of France?"


def token_ids(deltas) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def test_a_handoff_survives_the_trip_as_bytes():
    sent = handoff.Handoff(
        prompt_ids=[1, 2, 3],
        first_token=7,
        first_logprob=TokenLogprob(7, -0.25, ((7, -0.25), (9, -1.5))),
        layers=[
            (torch.randn(1, 3, 3, 8, dtype=torch.bfloat16), torch.randn(1, 3, 3, 8, dtype=torch.bfloat16))
        ],
        generator_state=torch.Generator().get_state(),
    )
    received = handoff.loads(handoff.dumps(sent))
    assert (received.prompt_ids, received.first_token, received.first_logprob) == (
        sent.prompt_ids,
        sent.first_token,
        sent.first_logprob,
    )
    assert torch.equal(received.layers[0][0], sent.layers[0][0])
    assert torch.equal(received.generator_state, sent.generator_state)


def test_bytes_that_are_not_a_handoff_are_refused():
    with pytest.raises(HandoffRefused):
        handoff.loads(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")


@in_module_loop
async def test_decoding_from_a_handoff_streams_the_tokens_of_a_whole_request(chat_engine):
    whole = chat_request(chat_engine, "whole", QUESTION, temperature=0, max_tokens=40)
    text, deltas = await collect(chat_engine, whole)
    blob = await chat_engine.prefill(replace(whole, request_id="prefill"))
    handed_text, handed = await collect(chat_engine, replace(whole, request_id="decode", handoff=blob))
    assert "Paris" in text
    assert handed_text == text
    assert token_ids(handed) == token_ids(deltas)
    assert handed[-1].usage == deltas[-1].usage


@in_module_loop
async def test_a_handoff_decodes_the_same_inside_a_busy_batch(chat_engine):
    whole = chat_request(chat_engine, "alone", "Name three colours.", temperature=0, max_tokens=30)
    _, expected = await collect(chat_engine, whole)
    blob = await chat_engine.prefill(replace(whole, request_id="busy-prefill"))
    others = [
        asyncio.create_task(
            collect(
                chat_engine,
                chat_request(chat_engine, f"other-{i}", "Tell me a story.", max_tokens=60, ignore_eos=True),
            )
        )
        for i in range(3)
    ]
    await asyncio.sleep(0.3)  # the others are decoding when the hand-off joins
    _, handed = await collect(chat_engine, replace(whole, request_id="busy-decode", handoff=blob))
    await asyncio.gather(*others)
    assert token_ids(handed) == token_ids(expected)


@in_module_loop
async def test_a_seeded_sample_continues_with_the_prefill_workers_generator(chat_engine):
    whole = chat_request(chat_engine, "seeded", QUESTION, temperature=1.0, seed=11, max_tokens=25, logprobs=2)
    _, expected = await collect(chat_engine, whole)
    blob = await chat_engine.prefill(replace(whole, request_id="seeded-prefill"))
    _, handed = await collect(chat_engine, replace(whole, request_id="seeded-decode", handoff=blob))
    assert token_ids(handed) == token_ids(expected)
    assert [lp.token_id for d in handed for lp in d.logprobs] == token_ids(expected)


@in_module_loop
async def test_a_handoff_for_another_prompt_is_refused(chat_engine):
    first = chat_request(chat_engine, "p1", QUESTION, temperature=0, max_tokens=5)
    blob = await chat_engine.prefill(first)
    other = chat_request(chat_engine, "p2", "What is the capital of Spain?", temperature=0, max_tokens=5)
    with pytest.raises(HandoffRefused, match="another prompt"):
        await collect(chat_engine, replace(other, handoff=blob))
    with pytest.raises(HandoffRefused):
        await collect(chat_engine, replace(other, request_id="p3", handoff=b"junk"))
