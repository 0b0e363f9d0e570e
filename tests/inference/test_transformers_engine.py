"""The transformers engine on the real SmolLM2-135M-Instruct, on the CPU.

One engine serves the whole module (loading costs seconds), so every test
uses its own request ids and leaves nothing running behind it.
"""

from __future__ import annotations

import asyncio

import pytest

from inference.engines.admission import Admission
from inference.engines.base import GenerationRequest
from inference.errors import InvalidRequest, PromptTooLong, QueueFull, WrongTask
from inference.sampling import SamplingParams
from tests.inference.conftest import chat_request, collect

pytestmark = pytest.mark.asyncio(loop_scope="module")

FRANCE = "What is the capital of France?"


async def test_greedy_answer_names_paris(chat_engine):
    text, deltas = await collect(chat_engine, chat_request(chat_engine, "paris", FRANCE, temperature=0))
    assert "Paris" in text
    final = deltas[-1]
    assert final.finish_reason == "stop"
    assert final.usage is not None
    assert final.usage.completion_tokens == sum(len(d.token_ids) for d in deltas)  # the EOS included
    assert final.token_ids[-1] in chat_engine.batcher.stop_ids
    assert all(d.finish_reason is None for d in deltas[:-1])


async def test_stop_string_ends_generation_and_is_not_emitted(chat_engine):
    full, _ = await collect(chat_engine, chat_request(chat_engine, "full", FRANCE, temperature=0))
    stop = "e is P"  # spans several tokens of "France is Paris"
    assert stop in full
    text, deltas = await collect(
        chat_engine, chat_request(chat_engine, "cut", FRANCE, temperature=0, stop=[stop])
    )
    assert text == full[: full.index(stop)]
    assert deltas[-1].finish_reason == "stop"


async def test_emoji_split_across_tokens_stream_without_replacement_chars(chat_engine):
    question = "Reply with three emoji about the sun."
    request = chat_request(chat_engine, "emoji", question, temperature=0, max_tokens=12)
    text, deltas = await collect(chat_engine, request)
    streamed_ids = [t for d in deltas for t in d.token_ids]
    assert not any("\ufffd" in d.text for d in deltas)
    assert text == chat_engine.tokenizer.decode(streamed_ids, skip_special_tokens=True)
    assert len([d for d in deltas if d.text]) < len(streamed_ids)  # bytes of one emoji were held together


async def test_max_tokens_ends_with_length(chat_engine):
    request = chat_request(chat_engine, "len", "Tell me a long story.", temperature=0, max_tokens=5)
    _, deltas = await collect(chat_engine, request)
    assert deltas[-1].finish_reason == "length"
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == 5


async def test_eight_concurrent_requests_give_the_same_greedy_text_as_alone(chat_engine):
    questions = [FRANCE, "Write a haiku about the sea.", "Hi!", "Name three colours."] * 2
    alone = []
    for i, question in enumerate(questions[:4]):
        text, _ = await collect(
            chat_engine, chat_request(chat_engine, f"one{i}", question, temperature=0, max_tokens=16)
        )
        alone.append(text)
    together = await asyncio.gather(
        *(
            collect(chat_engine, chat_request(chat_engine, f"many{i}", q, temperature=0, max_tokens=16))
            for i, q in enumerate(questions)
        )
    )
    assert [text for text, _ in together] == alone * 2


async def test_abort_ends_a_running_request_with_abort(chat_engine):
    request = chat_request(
        chat_engine, "doomed", "Count to one thousand.", temperature=0, max_tokens=300, ignore_eos=True
    )
    deltas = []
    async for delta in chat_engine.generate(request):
        deltas.append(delta)
        if len(deltas) == 2:
            stats = chat_engine.stats()
            assert (stats.in_flight, stats.queued) == (1, 0)
            assert stats.tokens_per_second > 0
            assert await chat_engine.abort("doomed")
    assert deltas[-1].finish_reason == "abort"
    usage = deltas[-1].usage
    assert usage is not None
    assert usage.completion_tokens < 300
    assert chat_engine.stats().in_flight == 0


async def test_consumer_that_goes_away_frees_its_batch_row(chat_engine):
    request = chat_request(chat_engine, "gone", "Count to one thousand.", temperature=0, max_tokens=300)
    stream = chat_engine.generate(request)
    await anext(stream)
    await stream.aclose()  # what the worker does when the HTTP client disconnects
    for _ in range(100):
        if chat_engine.batcher.batch is None:
            break
        await asyncio.sleep(0.05)
    assert chat_engine.batcher.batch is None
    assert chat_engine.stats().in_flight == 0


async def test_prompt_and_max_tokens_beyond_the_context_raise_prompt_too_long(chat_engine):
    limit = chat_engine.info.max_model_len
    request = chat_request(chat_engine, "long", FRANCE, max_tokens=limit)
    with pytest.raises(PromptTooLong):
        await collect(chat_engine, request)


@pytest.mark.parametrize(
    ("prompt", "stop_token_ids", "field"),
    [([1, 2, 49152], (), "prompt"), ([1, 2, 3], (2, 49152), "stop_token_ids")],
)
async def test_token_ids_past_the_vocabulary_are_refused_before_a_slot(
    chat_engine, prompt, stop_token_ids, field
):
    assert chat_engine.info.vocab_size == 49152
    params = SamplingParams(temperature=0, max_tokens=4, stop_token_ids=stop_token_ids)
    with pytest.raises(InvalidRequest) as raised:
        await collect(chat_engine, GenerationRequest("oov", prompt, params))
    assert raised.value.field == field
    assert "49152" in str(raised.value)
    assert chat_engine.stats().in_flight == 0


async def test_request_beyond_max_queue_is_refused_at_once(chat_engine, monkeypatch):
    monkeypatch.setattr(chat_engine, "admission", Admission(max_concurrency=1, max_queue=1, queue_timeout=30))
    params = {"temperature": 0, "max_tokens": 40, "ignore_eos": True}
    running = asyncio.ensure_future(collect(chat_engine, chat_request(chat_engine, "q1", FRANCE, **params)))
    waiting = asyncio.ensure_future(collect(chat_engine, chat_request(chat_engine, "q2", FRANCE, **params)))
    await asyncio.sleep(0.05)
    assert chat_engine.stats().queued == 1
    with pytest.raises(QueueFull):
        await collect(chat_engine, chat_request(chat_engine, "q3", FRANCE, **params))
    assert await chat_engine.abort("q2")  # queued: it ends as soon as it gets the slot
    assert await chat_engine.abort("q1")
    (_, first), (text, second) = await asyncio.gather(running, waiting)
    assert first[-1].finish_reason == "abort"
    assert (text, second[-1].finish_reason) == ("", "abort")


async def test_same_seed_gives_the_same_sample(chat_engine):
    params = {"temperature": 1.0, "max_tokens": 16, "seed": 1234}
    first, _ = await collect(chat_engine, chat_request(chat_engine, "s1", "Invent a word.", **params))
    second, _ = await collect(chat_engine, chat_request(chat_engine, "s2", "Invent a word.", **params))
    assert first == second


async def test_generative_model_refuses_embeddings(chat_engine):
    with pytest.raises(WrongTask):
        await chat_engine.embed(["hello"])


async def test_chat_prompt_uses_the_model_template(chat_engine):
    prompt = chat_engine.render_chat([{"role": "user", "content": "Hi"}])
    assert "<|im_start|>user\nHi<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
