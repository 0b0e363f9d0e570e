"""Logprobs from the transformers engine's batch equal a direct forward pass of the model.

The reference is a fresh `AutoModelForCausalLM` run once over prompt +
generated tokens, without cache, padding or batch neighbours; the engine's
values are the raw model distribution (before penalties, temperature or a
grammar's mask), so they must match it whatever the request's sampling.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import torch

from inference.engines.base import Delta, GenerationRequest, TokenLogprob
from inference.sampling import Guide, SamplingParams
from tests.inference.conftest import collect

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOLERANCE = 1e-3  # float32 on the CPU; batching and the KV cache change only the rounding


def reference_logprobs(model: Any, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """log_softmax of the logits that predicted each generated token (one row per token)."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + generated])).logits[0].float()
    return torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)


def request(engine: Any, rid: str, question: str, **params: Any) -> GenerationRequest:
    prompt = engine.tokenize(engine.render_chat([{"role": "user", "content": question}]))
    return GenerationRequest(rid, prompt, SamplingParams(**params))


def streamed(deltas: list[Delta]) -> tuple[list[int], list[TokenLogprob]]:
    ids = [t for d in deltas for t in d.token_ids]
    logprobs = [lp for d in deltas for lp in d.logprobs]
    assert all(len(d.logprobs) == len(d.token_ids) for d in deltas)  # one per token, in every delta
    return ids, logprobs


def assert_match_reference(
    model: Any, prompt: list[int], ids: list[int], logprobs: list[TokenLogprob], k: int
) -> None:
    expected = reference_logprobs(model, prompt, ids)
    for row, (token, entry) in enumerate(zip(ids, logprobs, strict=True)):
        assert entry.token_id == token
        assert entry.logprob == pytest.approx(float(expected[row, token]), abs=TOLERANCE)
        assert len(entry.top) == k
        values = [value for _, value in entry.top]
        assert values == sorted(values, reverse=True)
        top = torch.topk(expected[row], k)
        for (tid, value), ref_id, ref_value in zip(
            entry.top, top.indices.tolist(), top.values.tolist(), strict=True
        ):
            assert value == pytest.approx(ref_value, abs=TOLERANCE)
            assert tid == ref_id or value == pytest.approx(
                float(expected[row, tid]), abs=TOLERANCE
            )  # a near tie


async def test_greedy_logprobs_equal_a_direct_forward_pass(chat_engine, reference_model):
    greedy = request(
        chat_engine,
        "lp-greedy",
        "What is the capital of France?",
        temperature=0,
        max_tokens=8,
        logprobs=5,
        ignore_eos=True,
    )
    _, deltas = await collect(chat_engine, greedy)
    ids, logprobs = streamed(deltas)
    assert len(ids) == 8
    assert_match_reference(reference_model, greedy.prompt_token_ids, ids, logprobs, k=5)
    assert all(entry.top[0][0] == entry.token_id for entry in logprobs)  # greedy took the most likely


async def test_logprobs_are_the_raw_distribution_under_temperature_penalties_and_a_grammar(
    chat_engine, reference_model
):
    sampled = request(
        chat_engine,
        "lp-sampled",
        "Tell me a joke.",
        temperature=1.5,
        seed=7,
        max_tokens=6,
        logprobs=2,
        frequency_penalty=1.0,
    )
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    guide = Guide("json_schema", json.dumps(schema))
    guided = request(
        chat_engine, "lp-guided", "Is water wet?", temperature=0, max_tokens=20, logprobs=0, guide=guide
    )
    plain = request(chat_engine, "lp-none", "Name a colour.", temperature=0, max_tokens=6)
    (_, sampled_deltas), (text, guided_deltas), (_, plain_deltas) = await asyncio.gather(
        collect(chat_engine, sampled), collect(chat_engine, guided), collect(chat_engine, plain)
    )
    ids, logprobs = streamed(sampled_deltas)
    assert_match_reference(reference_model, sampled.prompt_token_ids, ids, logprobs, k=2)
    ids, logprobs = streamed(guided_deltas)
    assert json.loads(text) in ({"ok": True}, {"ok": False})
    assert_match_reference(reference_model, guided.prompt_token_ids, ids, logprobs, k=0)
    assert all(d.logprobs == () for d in plain_deltas)  # computed only for the rows that ask


async def test_tokens_render_as_text_and_exact_bytes(chat_engine):
    text = "Café ☀ ok"
    ids = chat_engine.tokenize(text)
    assert b"".join(chat_engine.token_bytes(t) for t in ids) == text.encode()
    for token in ids:
        raw = chat_engine.token_bytes(token)
        try:
            assert chat_engine.token_text(token) == raw.decode()
        except UnicodeDecodeError:  # part of a character: shown as U+FFFD, the bytes say which
            assert "\ufffd" in chat_engine.token_text(token)
    eos = chat_engine.tokenizer.eos_token_id
    assert chat_engine.token_text(eos) == chat_engine.tokenizer.eos_token


async def test_the_stop_token_that_ends_an_answer_is_listed_with_its_logprob(chat_engine, reference_model):
    # Scorers (lm-evaluation-harness) take the last entry for the generated token: it must be there.
    ended = request(chat_engine, "lp-eos", "Say OK.", temperature=0, max_tokens=24, logprobs=2)
    _, deltas = await collect(chat_engine, ended)
    ids, logprobs = streamed(deltas)
    assert deltas[-1].finish_reason == "stop"
    assert ids[-1] in chat_engine.batcher.stop_ids
    usage = deltas[-1].usage
    assert usage is not None
    assert usage.completion_tokens == len(ids) == len(logprobs)
    assert_match_reference(reference_model, ended.prompt_token_ids, ids, logprobs, k=2)
    stop_at = ids[1]  # a stop token id ends the answer the same way
    cut = request(
        chat_engine,
        "lp-stop-id",
        "Say OK.",
        temperature=0,
        max_tokens=24,
        logprobs=0,
        stop_token_ids=(stop_at,),
    )
    _, deltas = await collect(chat_engine, cut)
    assert streamed(deltas)[0] == ids[:2]
    usage = deltas[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (len(cut.prompt_token_ids), 2)
