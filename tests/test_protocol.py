"""The shared request parser on its own: typed requests, strict and lenient, errors naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from inference.errors import InvalidRequest
from inference.protocol import parse_chat, parse_completion, parse_embedding
from inference.protocol.tools import Tools, extract_calls

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def refused(parse: Any, body: dict[str, Any], *, strict: bool = True) -> str | None:
    with pytest.raises(InvalidRequest) as caught:
        parse(body, strict=strict)
    return caught.value.field


def test_a_strict_parse_names_an_unknown_field_and_a_lenient_one_keeps_it_for_the_upstream():
    assert refused(parse_chat, {**CHAT, "logit_bias": {"1": 2}}) == "logit_bias"
    assert parse_chat({**CHAT, "logit_bias": {"1": 2}}, strict=False).model == "m"


def test_current_openai_names_are_accepted():
    call = parse_chat(
        {
            **CHAT,
            "max_tokens": 50,
            "max_completion_tokens": 7,
            "user": "u",
            "metadata": {"team": "a"},
            "parallel_tool_calls": False,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        strict=True,
    )
    assert call.params.max_tokens == 7  # the newer name wins, as in vLLM
    assert call.include_usage
    assert call.max_tokens_given


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"response_format": {"type": "json_object"}, "guided_regex": "a+"}, "guided_regex"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "bad name"}}},
            "response_format.json_schema.name",
        ),
        ({"guided_choice": []}, "guided_choice"),
        ({"structured_outputs": {"json": {}, "regex": "a"}}, "structured_outputs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"best_of": 2, "stream": True}, "stream"),
        ({"length_penalty": 0.5}, "length_penalty"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}},
            "tool_choice",
        ),
        (
            {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
            "response_format",
        ),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "a", "tool_calls": []}]}, "messages[0].tool_calls"),
        ({"stream_options": {"continuous_usage_stats": True}}, "stream_options.continuous_usage_stats"),
        ({"metadata": {"k": 1}}, "metadata"),
    ],
)
def test_bad_combinations_are_refused_naming_the_field(extra, field):
    assert refused(parse_chat, {**CHAT, **extra}) == field


def test_each_structured_output_form_becomes_one_guide():
    forms = {
        "response_format": (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            "json_schema",
        ),
        "guided_json": ('{"type": "object"}', "json_schema"),
        "guided_regex": ("[0-9]+", "regex"),
        "guided_choice": (["a", "b"], "choice"),
        "guided_grammar": ('start: "yes" | "no"', "grammar"),
        "structured_outputs": ({"json_object": True}, "json_object"),
    }
    for name, (value, kind) in forms.items():
        guide = parse_chat({**CHAT, name: value}, strict=True).params.guide
        assert guide is not None
        assert (guide.kind, guide.field) == (kind, name)
    assert parse_chat({**CHAT, "response_format": {"type": "text"}}, strict=True).params.guide is None


def test_a_forced_tool_choice_is_a_guide_over_the_function_and_its_parameters():
    call = parse_chat(
        {
            **CHAT,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        strict=True,
    )
    guide = call.params.guide
    assert guide is not None
    assert guide.field == "tool_choice"
    schema = json.loads(guide.spec)
    assert schema["properties"]["name"] == {"const": "get_weather"}


def test_messages_are_flattened_for_templates():
    call = parse_chat(
        {
            **CHAT,
            "messages": [
                {
                    "role": "developer",
                    "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief"}],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c", "content": "1"},
            ],
        },
        strict=True,
    )
    assert call.messages[0] == {"role": "system", "content": "Be brief"}
    assert call.messages[1]["tool_calls"][0]["function"] == {"name": "f", "arguments": {"a": 1}}
    assert call.messages[2] == {"role": "tool", "content": "1", "tool_call_id": "c"}


def test_completion_and_embedding_bodies():
    assert parse_completion({"model": "m", "prompt": "once"}, strict=True).prompts == ("once",)
    assert parse_completion({"model": "m", "prompt": ["once"]}, strict=True).prompts == ("once",)
    assert parse_completion({"model": "m", "prompt": [1, 2]}, strict=True).prompts == ((1, 2),)
    assert parse_completion({"model": "m", "prompt": "a", "logprobs": 3}, strict=True).params.logprobs == 3
    assert parse_completion({"model": "m", "prompt": "a", "echo": True, "logprobs": 1}, strict=True).echo
    assert parse_embedding({"model": "m", "input": "a"}, strict=True).texts == ["a"]
    assert refused(parse_embedding, {"model": "m", "input": "a", "dimensions": 8}) == "dimensions"


def test_a_completion_takes_every_prompt_form_openai_and_vllm_take():
    def prompts(value: Any) -> tuple[Any, ...]:
        return parse_completion({"model": "m", "prompt": value}, strict=True).prompts

    assert prompts(["a", "b"]) == ("a", "b")
    assert prompts([[1, 2], [3]]) == ((1, 2), (3,))
    assert prompts([[5]]) == ((5,),)
    malformed: list[Any] = [
        [],
        [[]],
        ["a", [1]],
        ["a", ""],
        [[1], [-1]],
        [[True]],
        [1, "a"],
        [["a"]],
        3,
        [None],
    ]
    for bad in malformed:
        assert refused(parse_completion, {"model": "m", "prompt": bad}) == "prompt", bad
    assert refused(parse_completion, {"model": "m", "prompt": ["a"] * 65}) == "prompt"


def test_max_tokens_zero_is_the_echoed_prompt_alone_and_needs_echo():
    call = parse_completion({"model": "m", "prompt": [[1, 2]], "max_tokens": 0, "echo": True}, strict=True)
    assert (call.params.max_tokens, call.echo, call.max_tokens_given) == (0, True, True)
    assert refused(parse_completion, {"model": "m", "prompt": "a", "max_tokens": 0}) == "max_tokens"
    beams = {"model": "m", "prompt": "a", "max_tokens": 0, "echo": True, "use_beam_search": True, "n": 2}
    assert refused(parse_completion, beams) == "max_tokens"
    assert (
        refused(parse_completion, {"model": "m", "prompt": "a", "max_tokens": -1, "echo": True})
        == "max_tokens"
    )
    assert refused(parse_chat, {**CHAT, "max_tokens": 0}) == "max_tokens"  # chat has no echo


def test_tool_calls_are_read_back_from_an_answer():
    tools = Tools(functions=(WEATHER,), choice="auto")
    content, calls = extract_calls(
        'Let me check.<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>', tools
    )
    assert content == "Let me check."
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert extract_calls('{"name": "unknown", "arguments": {}}', tools) == (
        '{"name": "unknown", "arguments": {}}',
        [],
    )
    assert extract_calls("Paris.", tools) == ("Paris.", [])


def test_tool_call_arguments_nested_past_the_stack_are_a_400_naming_them():
    deep = "[" * 5000 + "]" * 5000
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": deep}}
    body = {"model": "m", "messages": [{"role": "assistant", "content": "", "tool_calls": [call]}]}
    with pytest.raises(InvalidRequest) as caught:
        parse_chat(body, strict=True)
    assert caught.value.field == "messages[0].tool_calls[0].function.arguments"
