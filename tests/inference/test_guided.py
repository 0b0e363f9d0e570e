"""Structured outputs in the transformers engine's batch, on the real SmolLM2 (CPU).

Guided requests share one batch with each other and with free requests: every
answer must parse and validate, free rows must decode exactly what they
decode alone, and a spec that does not compile, or a grammar that breaks
mid-generation, fails its own request only.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import pytest_asyncio
import torch

from inference.engines import create_engine
from inference.engines.base import Engine, EngineConfig, GenerationRequest
from inference.engines.canned import CannedTokenEngine
from inference.engines.guided import Grammar, unpack_bitmask
from inference.engines.logits import TokenPicker, apply_masks, pick_tokens
from inference.errors import InvalidRequest, RequestFailed
from inference.sampling import Guide, SamplingParams
from tests.inference.conftest import collect
from tests.inference.json_schemas import SCHEMAS

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_TOKENS = 160  # a ceiling: the grammar ends each answer long before


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(model_cache_dir: Path) -> AsyncIterator[Engine]:
    """One batch wide enough for the whole corpus at once."""
    config = EngineConfig(
        "smollm2-135m-instruct",
        device="cpu",
        dtype="float32",  # the greedy answers these tests know were found in float32
        max_concurrency=32,
        max_queue=8,
        cache_dir=str(model_cache_dir),
    )
    engine = create_engine(config, backend="transformers")
    await engine.start()
    yield engine
    await engine.shutdown()


def request(
    engine: Engine, rid: str, question: str, guide: Guide | None = None, **params: Any
) -> GenerationRequest:
    prompt = engine.tokenize(engine.render_chat([{"role": "user", "content": question}]))
    return GenerationRequest(rid, prompt, SamplingParams(guide=guide, **params))


def json_request(engine: Engine, index: int) -> GenerationRequest:
    _, question, schema = SCHEMAS[index]
    guide = Guide("json_schema", json.dumps(schema))
    return request(
        engine,
        f"schema-{index}",
        f"{question} Answer in JSON.",
        guide,
        temperature=0.7,
        seed=index,
        max_tokens=MAX_TOKENS,
    )


async def test_every_schema_in_the_corpus_parses_and_validates_at_temperature_0_7(engine):
    results = await asyncio.gather(*(collect(engine, json_request(engine, i)) for i in range(len(SCHEMAS))))
    assert len(results) >= 20
    for (name, _, schema), (text, deltas) in zip(SCHEMAS, results, strict=True):
        assert deltas[-1].finish_reason == "stop", (name, text)  # the grammar ended it, not max_tokens
        jsonschema.validate(json.loads(text), schema)


async def test_regex_choice_grammar_and_json_object_outputs_follow_their_guides(engine):
    cases = {
        "regex": (Guide("regex", r"[A-Z][a-z]{2,8} is [0-9]{1,2} years old\."), "How old is your friend?"),
        "choice": (Guide("choice", json.dumps(["yes", "no", "maybe"])), "Is the sky green?"),
        "lark": (
            Guide("grammar", 'start: "The answer is " NUM "."\nNUM: /[0-9]{1,3}/'),
            "What is 6 times 7?",
        ),
        "gbnf": (Guide("grammar", 'root ::= "Colour: " ("red" | "green" | "blue")'), "Pick a colour."),
        "object": (Guide("json_object", ""), "Describe a cat in JSON with two fields."),
    }
    # Any object is allowed, so nothing bounds its length: greedy, whose answer is known to close.
    sampling = {name: {"temperature": 0.7, "seed": 1} for name in cases} | {"object": {"temperature": 0}}
    results = await asyncio.gather(
        *(
            collect(engine, request(engine, name, question, guide, max_tokens=MAX_TOKENS, **sampling[name]))
            for name, (guide, question) in cases.items()
        )
    )
    texts = {name: text for name, (text, _) in zip(cases, results, strict=True)}
    assert re.fullmatch(r"[A-Z][a-z]{2,8} is [0-9]{1,2} years old\.", texts["regex"]), texts
    assert texts["choice"] in ("yes", "no", "maybe")
    assert re.fullmatch(r"The answer is [0-9]{1,3}\.", texts["lark"]), texts
    assert re.fullmatch(r"Colour: (red|green|blue)", texts["gbnf"]), texts
    assert isinstance(json.loads(texts["object"]), dict)
    assert all(deltas[-1].finish_reason == "stop" for _, deltas in results)


@pytest.mark.parametrize(
    ("kind", "spec"),
    [
        ("json_schema", "{not json"),
        ("json_schema", '["a list, not a schema"]'),
        ("json_schema", '{"type": "objekt"}'),
        ("json_schema", '{"type": "string", "pattern": "(("}'),
        ("json_schema", '{"$ref": "#/$defs/missing"}'),
        ("regex", "[a-z"),
        ("grammar", "start: @@@"),
        ("choice", "[]"),
        ("choice", '["a", 1]'),
    ],
)
async def test_a_spec_that_does_not_compile_is_refused_before_admission_naming_the_field(engine, kind, spec):
    bad = request(engine, f"bad-{kind}", "Hello", Guide(kind, spec, field="response_format"), max_tokens=4)
    with pytest.raises(InvalidRequest) as caught:
        await collect(engine, bad)
    assert caught.value.field == "response_format"
    assert caught.value.status_code == 400
    assert engine.admission.running == 0  # refused before it took a slot


async def test_free_rows_decode_the_same_tokens_beside_constrained_rows(engine):
    questions = ["What is the capital of France?", "Name three colours.", "Write a haiku about the sea."]
    solo = []
    for i, question in enumerate(questions):
        text, deltas = await collect(
            engine, request(engine, f"solo-{i}", question, temperature=0, max_tokens=16)
        )
        solo.append((text, [t for d in deltas for t in d.token_ids]))
    free = [request(engine, f"free-{i}", q, temperature=0, max_tokens=16) for i, q in enumerate(questions)]
    constrained = (2, 3, 14)  # short answers: colour, flag, code
    results = await asyncio.gather(
        *(collect(engine, r) for r in [*free, *(json_request(engine, i) for i in constrained)])
    )
    batched = [(text, [t for d in deltas for t in d.token_ids]) for text, deltas in results[:3]]
    assert batched == solo
    for (text, _), index in zip(results[3:], constrained, strict=True):
        jsonschema.validate(json.loads(text), SCHEMAS[index][2])


async def test_penalties_apply_under_the_mask(engine):
    guide = Guide("json_schema", json.dumps(SCHEMAS[5][2]))  # a shopping list: words may repeat
    penalised = request(
        engine,
        "pen",
        "Write a short shopping list.",
        guide,
        temperature=0,
        max_tokens=MAX_TOKENS,
        frequency_penalty=2.0,
        repetition_penalty=1.3,
    )
    text, deltas = await collect(engine, penalised)
    jsonschema.validate(json.loads(text), SCHEMAS[5][2])
    assert deltas[-1].finish_reason == "stop"


class BreakingMatcher:
    """A real matcher that refuses its third token, as a parser limit or an internal error would."""

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher
        self.consumed = 0

    def consume_token(self, token_id: int) -> bool:
        self.consumed += 1
        return self.consumed < 3 and bool(self.matcher.consume_token(token_id))

    def is_error(self) -> bool:
        return self.consumed >= 3

    def get_error(self) -> str:
        return "Parser Error: injected\n<state>"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.matcher, name)


async def test_a_grammar_that_breaks_mid_generation_fails_only_its_own_row(engine, monkeypatch):
    compile_real = engine.grammars.compile

    def compile_breaking(guide: Guide) -> Grammar:
        grammar = compile_real(guide)
        if "broken" in guide.spec:
            grammar.matcher = BreakingMatcher(grammar.matcher)
        return grammar

    monkeypatch.setattr(engine.grammars, "compile", compile_breaking)
    broken = request(
        engine, "broken", "Say hi.", Guide("regex", "(broken|[a-z ]{1,40})"), temperature=0, max_tokens=20
    )
    others = [
        json_request(engine, 2),
        request(engine, "free", "Name three colours.", temperature=0, max_tokens=12),
    ]
    results = await asyncio.gather(*(collect(engine, r) for r in [broken, *others]), return_exceptions=True)
    assert isinstance(results[0], RequestFailed)
    assert "injected" in str(results[0])
    text, _ = results[1]  # type: ignore[misc]
    jsonschema.validate(json.loads(text), SCHEMAS[2][2])
    assert results[2][1][-1].finish_reason == "length"  # type: ignore[index]


async def test_the_canned_engine_refuses_guides_and_logprobs_naming_the_field():
    canned = CannedTokenEngine(EngineConfig("canned"))
    guided = GenerationRequest("g", [1, 2], SamplingParams(guide=Guide("regex", "a+", field="guided_regex")))
    with pytest.raises(InvalidRequest) as caught:
        await collect(canned, guided)
    assert caught.value.field == "guided_regex"
    with pytest.raises(InvalidRequest) as caught:
        await collect(canned, GenerationRequest("l", [1, 2], SamplingParams(logprobs=2)))
    assert caught.value.field == "logprobs"


async def test_a_mask_forbids_tokens_in_its_own_row_only():
    logits = torch.arange(16.0).reshape(2, 8)
    allowed = torch.tensor([True, False] * 4)
    masked = apply_masks(logits, [None, allowed])
    assert torch.equal(masked[0], logits[0])
    assert masked[1].tolist() == [8.0, -np.inf, 10.0, -np.inf, 12.0, -np.inf, 14.0, -np.inf]
    greedy = [TokenPicker(SamplingParams(temperature=0), [], 8) for _ in range(2)]
    assert pick_tokens(masked, greedy) == [7, 6]  # row 1 would take 7 unmasked
    assert apply_masks(logits, [None, None]) is logits  # free batches keep the plain fast path


async def test_the_bitmask_unpacks_in_llguidance_bit_order():
    words = np.array([[0b101, -1]], dtype=np.int32)  # word j, bit i: token 32 * j + i
    assert unpack_bitmask(words, 40)[0].nonzero().flatten().tolist() == [0, 2, *range(32, 40)]
