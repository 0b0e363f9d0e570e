"""The llama.cpp engine: the packaged SmolLM2 served by xllamacpp, widened to float16 once.

The mapping of our parameters onto llama.cpp's request and of its chunks onto
Deltas is checked without the model; the rest runs the real one.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import pytest_asyncio
import torch

from inference.engines import create_engine
from inference.engines.base import Engine, EngineConfig, GenerationRequest
from inference.engines.llamacpp_engine import ChunkReader, completion_body
from inference.errors import InvalidRequest, ModelLoadError, WrongTask
from inference.loading import convert_gguf, gguf_for_llamacpp, gguf_from_folder, packaged_model_path
from inference.sampling import Guide, SamplingParams
from tests.inference.conftest import chat_request, collect

pytest.importorskip("xllamacpp")
QUESTION = "What is the capital of France?"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(model_cache_dir: Path) -> AsyncIterator[Engine]:
    config = EngineConfig(
        "smollm2-135m-instruct", device="cpu", max_concurrency=4, max_queue=4, cache_dir=str(model_cache_dir)
    )
    engine = create_engine(config, backend="llamacpp")
    await engine.start()
    yield engine
    await engine.shutdown()


def test_every_sampler_is_set_because_llama_cpp_defaults_differ_from_openai() -> None:
    params = SamplingParams(max_tokens=5, temperature=0.5, seed=2**40 + 3, stop=("x",))
    body = completion_body(GenerationRequest("r", [1, 2, 3], params), top_logprobs=1)
    assert body["prompt"] == [1, 2, 3]
    assert (body["top_k"], body["top_p"], body["min_p"], body["repeat_penalty"]) == (0, 1.0, 0.0, 1.0)
    assert body["repeat_last_n"] == 8  # the whole request: prompt and answer
    assert body["seed"] < 2**32 - 1  # llama.cpp's seeds are uint32, and 0xFFFFFFFF means random
    assert (body["stop"], body["stream"], body["logprobs"]) == (["x"], True, 1)
    assert body["cache_prompt"] is False  # a cached prompt's logits differ in the last bits
    assert (body["verbose"], body["response_fields"]) == (True, ["tokens"])  # each chunk's token ids
    assert completion_body(GenerationRequest("r", [1], SamplingParams()), top_logprobs=0)["logprobs"] == 0
    assert completion_body(GenerationRequest("r", [1], SamplingParams()), top_logprobs=1)["cache_prompt"]
    unseeded = GenerationRequest("r", [1], SamplingParams())
    assert not completion_body(unseeded, top_logprobs=1, reuse_prompts=False)["cache_prompt"]  # cache off
    assert "grammar" not in body
    guided = GenerationRequest("g", [1], SamplingParams(guide=Guide("regex", "[a-z]+")))
    assert completion_body(guided, top_logprobs=1, grammar="root ::= [a-z]+")["grammar"] == "root ::= [a-z]+"


def _chunk(text: str, ids: list[int]) -> dict[str, Any]:
    """A streamed llama.cpp completion chunk, with two top logprobs per token."""
    top = [{"id": 9, "logprob": -1.0}]
    content = [{"id": i, "logprob": -0.5, "top_logprobs": [{"id": i, "logprob": -0.5}, *top]} for i in ids]
    choice = {"text": text, "finish_reason": None, "logprobs": {"content": content}}
    return {"choices": [choice], "__verbose": {"tokens": ids}}


def test_chunks_become_deltas_and_a_stop_token_ends_the_answer_billed_and_listed_without_its_text() -> None:
    request = GenerationRequest("r", [1, 2], SamplingParams(stop_token_ids=(42,), logprobs=1))
    reader = ChunkReader(request, tokenizer=None)
    first = reader.read(_chunk("Hel", [7]))
    assert (first.text, first.token_ids, first.finish_reason) == ("Hel", (7,), None)
    assert len(first.logprobs) == 1
    assert len(first.logprobs[0].top) == 1
    stopped = reader.read(_chunk("STOP", [42, 8]))
    assert (stopped.text, stopped.token_ids, stopped.finish_reason) == ("", (42,), "stop")
    assert [entry.token_id for entry in stopped.logprobs] == [42]  # as vLLM lists a stop token
    assert stopped.usage is not None
    assert (stopped.usage.prompt_tokens, stopped.usage.completion_tokens) == (2, 2)


def test_the_final_chunk_carries_llama_cpp_usage_and_an_error_chunk_fails_the_request() -> None:
    reader = ChunkReader(GenerationRequest("r", [1, 2, 3], SamplingParams()), tokenizer=None)
    plain = reader.read({"choices": [{"text": "Hi", "finish_reason": None}], "__verbose": {"tokens": [5]}})
    assert (plain.token_ids, plain.logprobs) == ((5,), ())  # no logprobs asked: the ids still come
    last = reader.read(
        {"choices": [{"text": "", "finish_reason": "length"}], "usage": {"completion_tokens": 4}}
    )
    assert last.usage is not None
    assert last.usage.completion_tokens == 4
    assert last.logprobs == ()
    with pytest.raises(InvalidRequest, match="invalid tokens"):
        reader.read({"error": {"code": 400, "message": "Prompt contains invalid tokens"}})


def test_a_small_low_bit_gguf_is_widened_once_and_other_choices_are_kept(model_cache_dir: Path) -> None:
    packaged = packaged_model_path("smollm2-135m-instruct")
    widened = gguf_for_llamacpp(packaged, "auto", cache_dir=model_cache_dir)
    assert widened.name.endswith(".float16.gguf")
    assert widened.parent == model_cache_dir.resolve()
    stamp = widened.stat().st_mtime_ns
    assert gguf_for_llamacpp(packaged, "float16", cache_dir=model_cache_dir) == widened
    assert widened.stat().st_mtime_ns == stamp  # converted once
    assert gguf_for_llamacpp(packaged, "keep", cache_dir=model_cache_dir) == packaged
    with pytest.raises(ModelLoadError, match="--dtype int3"):
        gguf_for_llamacpp(packaged, "int3", cache_dir=model_cache_dir)


async def test_smollm2_answers_paris_at_temperature_zero(engine: Engine) -> None:
    text, deltas = await collect(
        engine, chat_request(engine, "paris", QUESTION, temperature=0, max_tokens=30)
    )
    assert "Paris" in text
    assert deltas[-1].finish_reason == "stop"
    usage = deltas[-1].usage
    assert usage is not None
    assert usage.completion_tokens == sum(len(d.token_ids) for d in deltas)
    assert engine.info.backend == "llamacpp"
    assert "float16" in engine.info.detail


async def test_concurrent_greedy_answers_equal_the_answer_alone(engine: Engine) -> None:
    questions = [QUESTION, "Name three colours.", "What is 2 + 2?", "Say hello in French."]
    alone = [
        (await collect(engine, chat_request(engine, f"a{i}", q, temperature=0, max_tokens=24)))[0]
        for i, q in enumerate(questions)
    ]
    together = await asyncio.gather(
        *(
            collect(engine, chat_request(engine, f"t{i}", q, temperature=0, max_tokens=24))
            for i, q in enumerate(questions)
        )
    )
    assert [text for text, _ in together] == alone


async def test_a_seed_repeats_a_sample_and_stop_strings_and_tokens_end_it(engine: Engine) -> None:
    def sampled(rid: str, seed: int) -> GenerationRequest:
        return chat_request(engine, rid, "Tell me a story.", temperature=1.0, seed=seed, max_tokens=16)

    first, again, other = [
        (await collect(engine, sampled(rid, seed)))[0] for rid, seed in (("s1", 5), ("s2", 5), ("s3", 6))
    ]
    assert first == again != other
    counted, _ = await collect(
        engine, chat_request(engine, "stop", "Count from 1 to 10.", temperature=0, max_tokens=40, stop=("5",))
    )
    assert "4" in counted
    assert "5" not in counted
    period = engine.tokenize(".")[0]
    text, deltas = await collect(
        engine, chat_request(engine, "tok", QUESTION, temperature=0, max_tokens=30, stop_token_ids=(period,))
    )
    assert text == "The capital of France is Paris"
    assert deltas[-1].finish_reason == "stop"


async def test_a_json_schema_is_followed_and_a_broken_one_is_refused_before_a_slot(engine: Engine) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "big": {"type": "boolean"}},
        "required": ["city", "big"],
        "additionalProperties": False,
    }
    guide = Guide("json_schema", json.dumps(schema))
    request = chat_request(engine, "json", QUESTION, temperature=0.7, seed=2, max_tokens=40, guide=guide)
    text, deltas = await collect(engine, request)
    jsonschema.validate(json.loads(text), schema)
    assert deltas[-1].finish_reason == "stop"
    broken = Guide("json_schema", json.dumps({"type": "nonsense"}), field="response_format")
    with pytest.raises(InvalidRequest) as refused:
        await collect(engine, chat_request(engine, "bad", QUESTION, max_tokens=5, guide=broken))
    assert refused.value.field == "response_format"


async def test_logprobs_are_the_raw_distribution(engine: Engine, reference_model: Any) -> None:
    request = chat_request(engine, "lp", QUESTION, temperature=1.5, seed=3, max_tokens=3, logprobs=3)
    _, deltas = await collect(engine, request)
    entries = [entry for d in deltas for entry in d.logprobs]
    assert len(entries) == 3
    assert all(len(e.top) == 3 for e in entries)
    ids = list(request.prompt_token_ids)
    for entry in entries:  # float16 weights against the float32 reference: close, not equal
        with torch.inference_mode():
            logits = reference_model(input_ids=torch.tensor([ids])).logits[0, -1]
        expected = torch.log_softmax(logits.float(), dim=-1)
        assert math.isclose(entry.logprob, float(expected[entry.token_id]), abs_tol=0.1)
        assert entry.top[0][0] == int(expected.argmax())
        ids.append(entry.token_id)


async def test_an_abort_ends_the_answer_and_frees_its_slot(engine: Engine) -> None:
    request = chat_request(engine, "long", "Write a long story about the sea.", temperature=0, max_tokens=400)
    deltas = []
    async for delta in engine.generate(request):
        deltas.append(delta)
        if len(deltas) == 3:
            stats = engine.stats()
            assert stats.kv_cache_usage is not None
            assert stats.kv_cache_usage > 0  # its prompt and max_tokens are reserved
            assert await engine.abort("long")
    assert deltas[-1].finish_reason == "abort"
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens >= 3
    assert not await engine.abort("long")  # gone
    assert (engine.stats().in_flight, engine.stats().kv_cache_usage) == (0, 0.0)


async def test_a_consumer_that_leaves_frees_its_slot(engine: Engine) -> None:
    stream = engine.generate(
        chat_request(engine, "left", "Write a long poem.", temperature=0, max_tokens=400)
    )
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert engine.stats().in_flight == 0
    text, _ = await collect(engine, chat_request(engine, "next", QUESTION, temperature=0, max_tokens=30))
    assert "Paris" in text


def test_auto_picks_llama_cpp_for_a_gguf_on_the_cpu(
    model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inference import engines

    chosen: list[str] = []
    monkeypatch.setattr(
        "inference.engines.llamacpp_engine.LlamaCppEngine.__init__",
        lambda self, config, **kw: chosen.append(str(kw["gguf"])),
    )
    engines.create_engine(EngineConfig("smollm2-135m-instruct", device="cpu", cache_dir=str(model_cache_dir)))
    assert chosen
    assert chosen[0].endswith(".float16.gguf")


async def test_a_llama_folder_is_exported_once_and_samples_like_the_gguf_it_came_from(
    engine: Engine, model_cache_dir: Path, tmp_path: Path
) -> None:
    # The cached folder holds the packaged GGUF's weights: exported, they must sample the same text.
    folder = convert_gguf(packaged_model_path("smollm2-135m-instruct"), cache_dir=model_cache_dir)
    exported = gguf_from_folder(folder, "auto", cache_dir=model_cache_dir)
    stamp = exported.stat().st_mtime_ns
    config = EngineConfig(str(folder), device="cpu", max_concurrency=2, cache_dir=str(model_cache_dir))
    from_folder = create_engine(config, backend="llamacpp")
    assert exported.stat().st_mtime_ns == stamp  # exported once
    assert exported.name in from_folder.info.detail

    def story(target: Engine) -> GenerationRequest:
        return chat_request(target, "story", "Tell me a story.", temperature=1.0, seed=5, max_tokens=16)

    assert (await collect(from_folder, story(from_folder)))[0] == (await collect(engine, story(engine)))[0]
    await from_folder.shutdown()
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelLoadError, match="GPT2LMHeadModel"):
        gguf_from_folder(other, "auto", cache_dir=tmp_path)


async def test_requests_that_would_overflow_the_shared_kv_cache_wait_instead_of_failing(
    model_cache_dir: Path,
) -> None:
    # A 128-token cache and three answers of 90 tokens: together they would not fit, and
    # llama.cpp fails every sequence when its cache runs out. Each waits for its share instead.
    config = EngineConfig(
        "smollm2-135m-instruct",
        device="cpu",
        max_concurrency=3,
        max_model_len=128,
        cache_dir=str(model_cache_dir),
    )
    small = create_engine(config, backend="llamacpp")
    requests = [
        chat_request(small, f"kv{i}", f"Tale {i}", temperature=0, max_tokens=90, ignore_eos=True)
        for i in range(3)
    ]
    results = await asyncio.gather(*(collect(small, r) for r in requests))
    assert [deltas[-1].finish_reason for _, deltas in results] == ["length"] * 3
    await small.shutdown()


async def test_minilm_exported_for_llama_cpp_embeds_as_sentence_transformers_does(
    model_cache_dir: Path,
) -> None:
    from sentence_transformers import SentenceTransformer

    config = EngineConfig("all-minilm-l6-v2", device="cpu", max_concurrency=2, cache_dir=str(model_cache_dir))
    encoder = create_engine(config, backend="llamacpp")
    assert (encoder.info.task, encoder.info.backend) == ("embed", "llamacpp")
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The sky is blue."]
    result = await encoder.embed(texts)
    folder = packaged_model_path("all-minilm-l6-v2")
    reference = SentenceTransformer(str(folder), device="cpu").encode(texts, normalize_embeddings=True)
    for vector, expected in zip(result.vectors, reference, strict=True):
        assert (
            float(torch.tensor(vector) @ torch.tensor(expected)) > 0.999
        )  # float16 weights: cosine, not equality
    assert result.prompt_tokens == 26  # with [CLS] and [SEP]
    with pytest.raises(InvalidRequest, match="at most 512"):
        await encoder.embed(["word " * 600])
    with pytest.raises(WrongTask):
        await collect(encoder, GenerationRequest("g", [101, 102], SamplingParams()))
    await encoder.shutdown()


async def test_an_encoder_gguf_given_on_its_own_is_served_by_llama_cpp_with_its_own_tokenizer(
    model_cache_dir: Path,
) -> None:
    from sentence_transformers import SentenceTransformer

    folder = packaged_model_path("all-minilm-l6-v2")
    exported = gguf_from_folder(folder, "auto", cache_dir=model_cache_dir)
    encoder = create_engine(EngineConfig(str(exported), device="cpu", cache_dir=str(model_cache_dir)))
    assert (encoder.info.task, encoder.info.backend, encoder.info.max_model_len) == ("embed", "llamacpp", 512)
    texts = ["A man is eating FOOD.", "Héllo, wörld! Tokenization-test: 3.14"]
    result = await encoder.embed(texts)
    reference = SentenceTransformer(str(folder), device="cpu").encode(texts, normalize_embeddings=True)
    for vector, expected in zip(result.vectors, reference, strict=True):
        assert float(torch.tensor(vector) @ torch.tensor(expected)) > 0.999
    assert result.prompt_tokens == 22  # llama.cpp's WordPiece splits as the Hugging Face tokenizer does
    with pytest.raises(WrongTask):
        encoder.render_chat([{"role": "user", "content": "hi"}])
    await encoder.shutdown()


async def test_the_eos_that_ends_an_answer_is_billed_and_listed_with_its_logprob(engine: Engine) -> None:
    request = chat_request(engine, "eos", "Say OK.", temperature=0, max_tokens=24, logprobs=1)
    _, deltas = await collect(engine, request)
    ids = [t for d in deltas for t in d.token_ids]
    assert deltas[-1].finish_reason == "stop"
    assert ids[-1] == engine.tokenizer.eos_token_id  # type: ignore[attr-defined]
    assert [entry.token_id for d in deltas for entry in d.logprobs] == ids
    assert deltas[-1].usage is not None
    assert deltas[-1].usage.completion_tokens == len(ids)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_repeated_prefix_is_served_from_a_slots_cached_prompt(engine: Engine) -> None:
    system = "You answer questions about a small library that opens at nine and closes at six. " * 8
    first, second = (
        engine.tokenize(
            engine.render_chat([{"role": "system", "content": system}, {"role": "user", "content": q}])
        )
        for q in ("When do you open?", "When do you close?")
    )
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    params = SamplingParams(temperature=0, max_tokens=4)
    _, cold = await collect(engine, GenerationRequest("prefix-1", first, params))
    _, warm = await collect(engine, GenerationRequest("prefix-2", second, params))
    assert cold[-1].usage is not None
    assert warm[-1].usage is not None
    assert cold[-1].usage.cached_tokens < shared  # whatever earlier tests left, not this prefix
    assert shared - 1 <= warm[-1].usage.cached_tokens <= shared  # llama.cpp reuses up to the first difference
