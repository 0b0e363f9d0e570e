"""Closed JSON schemas and cut-off forced tool calls, in the shared parser and the worker's answer shaping.

A schema that says nothing about extra keys is closed, as vLLM's default
backend reads it (Pydantic's schemas never say); a forced call that stopped
early is still a call, with the arguments written so far, never the wrapper
as content.
"""

from __future__ import annotations

import json
from typing import Any

import llguidance
import pytest

from inference.engines.base import Delta
from inference.errors import InvalidRequest
from inference.protocol import parse_chat
from inference.protocol.structured import closed_objects
from inference.protocol.tools import Tools, cut_call
from inference.worker.answers import ChoiceText, finished_choice
from inference.worker.protocol import Shape

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
ORDER: Any = {
    "type": "function",
    "function": {
        "name": "Order",
        "parameters": {
            "type": "object",
            "properties": {"item": {"type": "string"}, "count": {"type": "integer"}},
            "required": ["item", "count"],
        },
    },
}
REFUND: Any = {"type": "function", "function": {"name": "Refund", "parameters": {"type": "object"}}}
ORDINAL: Any = {"type": "function", "function": {"name": "Ordinal", "parameters": {"type": "object"}}}


def pydantic_like() -> dict[str, Any]:
    """What Pydantic writes for a model with a nested model, a list of them and an optional union."""
    address = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    return {
        "$defs": {"Address": address},
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "home": {"$ref": "#/$defs/Address"},
            "visits": {
                "type": "array",
                "items": {"type": "object", "properties": {"day": {"type": "string"}}},
            },
            "pet": {
                "anyOf": [{"type": "object", "properties": {"kind": {"type": "string"}}}, {"type": "null"}]
            },
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "extra": {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": True,
            },
            "free": {"type": "object"},
        },
        "required": ["name"],
    }


def test_objects_that_list_properties_and_say_nothing_are_closed_at_every_depth():
    schema = closed_objects(pydantic_like())
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Address"]["additionalProperties"] is False
    assert schema["properties"]["visits"]["items"]["additionalProperties"] is False
    assert schema["properties"]["pet"]["anyOf"][0]["additionalProperties"] is False
    assert schema["properties"]["pet"]["anyOf"][1] == {"type": "null"}
    # Said explicitly (a schema or true), or nothing listed: left open.
    assert schema["properties"]["tags"]["additionalProperties"] == {"type": "string"}
    assert schema["properties"]["extra"]["additionalProperties"] is True
    assert schema["properties"]["free"] == {"type": "object"}
    assert "additionalProperties" not in pydantic_like()  # the client's schema is not changed in place


def test_a_property_named_like_a_keyword_is_a_name_not_a_schema():
    schema = closed_objects(
        {"type": "object", "properties": {"properties": {"type": "string"}, "items": {"type": "integer"}}}
    )
    assert schema["properties"] == {"properties": {"type": "string"}, "items": {"type": "integer"}}
    assert schema["additionalProperties"] is False


def test_objects_combined_with_all_of_or_a_ref_stay_open_so_their_parts_can_add_keys():
    a = {"type": "object", "properties": {"a": {"type": "string"}}}
    b = {"type": "object", "properties": {"b": {"type": "string"}}}
    schema = closed_objects({"allOf": [a, b], "properties": {"c": {"type": "string"}}})
    assert "additionalProperties" not in schema
    assert all("additionalProperties" not in part for part in schema["allOf"])
    assert "additionalProperties" not in closed_objects({"$ref": "#/$defs/A", "properties": {"x": {}}})
    nested = closed_objects({"allOf": [{"properties": {"inner": a}}]})
    assert nested["allOf"][0]["properties"]["inner"]["additionalProperties"] is False


@pytest.mark.parametrize(
    "field",
    [
        lambda s: {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": s}}},
        lambda s: {"guided_json": s},
        lambda s: {"guided_json": json.dumps(s)},
        lambda s: {"structured_outputs": {"json": s}},
    ],
    ids=["response_format", "guided_json", "guided_json_text", "structured_outputs"],
)
def test_every_json_schema_field_asks_for_the_closed_schema(field):
    guide = parse_chat({**CHAT, **field(pydantic_like())}, strict=True).params.guide
    assert guide is not None
    assert json.loads(guide.spec) == closed_objects(pydantic_like())


def test_a_forced_call_closes_the_function_parameters():
    body = {**CHAT, "tools": [ORDER], "tool_choice": "required"}
    guide = parse_chat(body, strict=True).params.guide
    assert guide is not None
    arguments = json.loads(guide.spec)["properties"]["arguments"]
    assert arguments == {**ORDER["function"]["parameters"], "additionalProperties": False}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "Person"}}])
def test_a_forced_call_keeps_the_parameters_refs_working_where_they_are_placed(choice):
    """Pydantic's `#/$defs/...` refs point into the parameters, which the call wraps: they must follow."""
    person: Any = {"type": "function", "function": {"name": "Person", "parameters": pydantic_like()}}
    guide = parse_chat({**CHAT, "tools": [ORDER, person], "tool_choice": choice}, strict=True).params.guide
    assert guide is not None
    assert (
        llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_json_schema(guide.spec)) == ""
    )


def test_a_schema_too_deep_to_walk_is_a_400_naming_its_field():
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(3000):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(InvalidRequest) as caught:
        parse_chat({**CHAT, "guided_json": deep}, strict=True)
    assert caught.value.field == "guided_json"


@pytest.mark.parametrize(
    ("text", "name", "arguments"),
    [
        ('{"name": "Order", "arguments": {"item": "app', "Order", '{"item": "app'),
        (
            '{"name": "Order", "arguments": {"item": "apple", "count": 2}',
            "Order",
            '{"item": "apple", "count": 2}',
        ),
        ('{"name": "Order", "argu', "Order", ""),
        ('{"name": "Ref', "Refund", ""),  # only one function begins so
    ],
)
def test_a_cut_required_call_keeps_its_name_and_the_arguments_written_so_far(text, name, arguments):
    tools = Tools(functions=(ORDER, REFUND), choice="required")
    (call,) = cut_call(text, tools)
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"] == {"name": name, "arguments": arguments}


def test_a_cut_call_that_cannot_tell_its_function_is_no_call():
    tools = Tools(functions=(ORDER, ORDINAL, REFUND), choice="required")
    assert cut_call('{"name": "Ord', tools) == []
    assert cut_call("{", tools) == []
    named = Tools(functions=(ORDER, ORDINAL, REFUND), choice="function", name="Ordinal")
    assert cut_call("{", named)[0]["function"] == {"name": "Ordinal", "arguments": ""}


def test_a_forced_answer_cut_by_max_tokens_is_a_tool_call_with_finish_reason_length():
    body = {**CHAT, "tools": [ORDER], "tool_choice": {"type": "function", "function": {"name": "Order"}}}
    call = parse_chat(body, strict=True)
    shape = Shape(chat=True, response_id="chatcmpl-1", model="m", created=0)
    choice = ChoiceText()
    choice.add(
        Delta(text='{"name": "Order", "arguments": {"item": "ap', token_ids=(1, 2), finish_reason="length")
    )
    answer = finished_choice(shape, call, 0, choice, lambda token_id: ("", b""))
    assert answer["finish_reason"] == "length"
    assert answer["message"]["content"] is None
    (tool_call,) = answer["message"]["tool_calls"]
    assert tool_call["function"] == {"name": "Order", "arguments": '{"item": "ap'}
    whole = ChoiceText()
    whole.add(
        Delta(text='{"name": "Order", "arguments": {"item": "apple", "count": 1}}', finish_reason="stop")
    )
    answer = finished_choice(shape, call, 0, whole, lambda token_id: ("", b""))
    assert answer["finish_reason"] == "tool_calls"
    assert json.loads(answer["message"]["tool_calls"][0]["function"]["arguments"]) == {
        "item": "apple",
        "count": 1,
    }
