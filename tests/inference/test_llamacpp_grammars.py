"""Structured outputs on every llama.cpp build: Lark where llguidance is built in, GBNF where it is not.

The GBNF translation is checked without a model; then the packaged SmolLM2
runs every kind the protocol accepts (response_format json_object and
json_schema, guided_regex, guided_choice, guided_grammar, a forced and a
required tool call) on the build this machine loads (the native one once it
is built: see conftest), and again on the GBNF route, which every build has.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import pytest_asyncio

from inference.engines import create_engine
from inference.engines.base import EngineConfig
from inference.engines.gbnf import gbnf_text, regex_gbnf
from inference.engines.llamacpp_engine import LlamaCppEngine
from inference.errors import InvalidRequest
from inference.protocol.tools import Tools
from inference.sampling import Guide
from tests.inference.conftest import chat_request, collect

pytest.importorskip("xllamacpp")
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 24}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "big": {"type": "boolean"}},
    "required": ["city", "big"],
    "additionalProperties": False,
}


def test_choices_and_regexes_become_gbnf() -> None:
    choice = gbnf_text(Guide("choice", json.dumps(['say "yes"', "no"]), "guided_choice"), _no_schemas)
    assert choice == 'root ::= "say \\"yes\\"" | "no"'
    assert regex_gbnf(r"^\d{3}-[a-z]+(x|yz)?\.$") == '([0-9]{3} "-" [a-z]+ ("x" | "yz")? ".")'
    assert regex_gbnf(r"[^\^\]-]*\S+.") == r"([^\x5e\]\-]* [^ \t\n\r\x0b\x0c]+ [^\n])"


def test_json_layout_is_one_space_at_most_and_what_gbnf_cannot_say_is_refused_by_field() -> None:
    def converter(schema: Any) -> str:
        return f'root ::= "{{" space "}}"\nspace ::= | " " | "\\n"{{1,2}} [ \\t]{{0,20}}\n# {schema}'

    grammar = gbnf_text(Guide("json_object", "", "response_format"), converter)
    assert 'space ::= " "?' in grammar
    assert "{'type': 'object'}" in grammar
    refused = [
        Guide("regex", r"(a)\1", "guided_regex"),
        Guide("regex", r"a(?=b)", "guided_regex"),
        Guide("regex", r"(?i)abc", "guided_regex"),
        Guide("grammar", "start: /[a-z]+/", "guided_grammar"),  # Lark: llguidance's, not llama.cpp's
        Guide("choice", "[]", "guided_choice"),
        Guide("json_schema", "[1]", "guided_json"),
    ]
    for guide in refused:
        with pytest.raises(InvalidRequest) as caught:
            gbnf_text(guide, converter)
        assert caught.value.field == guide.field


def _no_schemas(schema: Any) -> str:
    raise AssertionError("not a JSON guide")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(model_cache_dir: Path) -> AsyncIterator[LlamaCppEngine]:
    config = EngineConfig(
        "smollm2-135m-instruct", device="cpu", max_concurrency=4, max_queue=8, cache_dir=str(model_cache_dir)
    )
    engine = create_engine(config, backend="llamacpp")
    assert isinstance(engine, LlamaCppEngine)
    await engine.start()
    yield engine
    await engine.shutdown()


def _guides() -> list[tuple[Guide, Any]]:
    """Each kind the protocol accepts, with a check of its answer."""
    forced = Tools((WEATHER, TIME), "function", "get_weather").guide()
    required = Tools((WEATHER, TIME), "required").guide()
    assert forced is not None
    assert required is not None

    def call(names: set[str]) -> Any:
        return lambda text: json.loads(text)["name"] in names

    def valid(schema: Any) -> Any:
        return lambda text: jsonschema.validate(json.loads(text), schema) is None

    return [
        (Guide("json_object", "", "response_format"), lambda text: isinstance(json.loads(text), dict)),
        (Guide("json_schema", json.dumps(CITY), "response_format"), valid(CITY)),
        (Guide("regex", r"[A-Z][a-z]{1,12} is [0-9]{1,3}", "guided_regex"), None),  # bounded: it ends
        (Guide("choice", json.dumps(["Paris", "Lyon", "Nice"]), "guided_choice"), None),
        (Guide("grammar", 'root ::= "The answer is " ("yes" | "no") "."', "guided_grammar"), None),
        (forced, call({"get_weather"})),
        (required, call({"get_weather", "get_time"})),
    ]


async def _follows(engine: LlamaCppEngine, guides: list[tuple[Guide, Any]]) -> None:
    for n, (guide, check) in enumerate(guides):
        question = "What is the capital of France?"
        request = chat_request(
            engine, f"g{n}", question, temperature=0.8, seed=n, max_tokens=120, guide=guide
        )
        text, deltas = await collect(engine, request)
        assert deltas[-1].finish_reason == "stop", (guide.kind, text)
        if guide.kind == "regex":
            assert re.fullmatch(guide.spec, text), text
        elif guide.kind == "choice":
            assert text in json.loads(guide.spec)
        elif guide.kind == "grammar":
            assert text in ("The answer is yes.", "The answer is no.")
        else:
            assert check(text), (guide.field, text)


async def test_every_kind_is_followed_on_the_build_this_machine_loads(engine: LlamaCppEngine) -> None:
    assert engine.info.build.startswith("llama.cpp native" if engine.build.native else "llama.cpp portable")
    assert engine.llguidance is not engine.build.native  # the native build has no llguidance
    await _follows(engine, _guides())


async def test_the_gbnf_route_follows_every_kind_and_refuses_what_llama_cpp_cannot_parse(
    engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "llguidance", False)
    # The portable wheel converts JSON schemas to llguidance's Lark only: there, the other kinds.
    await _follows(engine, _guides() if engine.build.native else _guides()[2:5])
    # llguidance reads it; llama.cpp refuses over 2,000 repetitions: the request fails, named.
    broken = Guide("grammar", 'root ::= "a"{3000}', "guided_grammar")
    with pytest.raises(InvalidRequest) as refused:
        await collect(engine, chat_request(engine, "bad", "Hi", max_tokens=4, guide=broken))
    assert refused.value.field == "guided_grammar"
    assert "llama.cpp refused" in str(refused.value), refused.value
