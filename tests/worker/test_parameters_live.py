"""Every request parameter works or is refused, on a real SmolLM2 worker, through the openai SDK.

Tools (named and required choices, streamed and not), logprobs in both
shapes, n with a seed, best_of, echo, structured outputs, and unknown fields
refused by name. The engine-level checks (masks, logprob values against a
forward pass) live in tests/inference/.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import jsonschema
import pytest
from openai import BadRequestError

from tests.processes import WorkerProcess
from tests.worker.live import client

pytestmark = pytest.mark.slow
QUESTION: Any = [{"role": "user", "content": "What is the capital of France?"}]
# The tools' parameters are closed and bounded (no extra properties, short
# strings), so that a sampled call always ends within max_tokens.
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "unit": {"type": "string", "enum": ["C", "F"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 24}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK_WEATHER: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_a_named_tool_choice_returns_arguments_valid_for_the_schema(smol: WorkerProcess) -> None:
    answer = client(smol).chat.completions.create(
        model="smol",
        messages=ASK_WEATHER,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=100,
        temperature=0.7,
        seed=7,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    arguments = json.loads(calls[0].function.arguments)  # type: ignore[union-attr]
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])


def test_a_streamed_required_tool_call_arrives_as_tool_call_deltas(smol: WorkerProcess) -> None:
    stream = client(smol).chat.completions.create(
        model="smol",
        messages=ASK_WEATHER,
        tools=[WEATHER, TIME],
        tool_choice="required",
        max_tokens=100,
        seed=7,
        stream=True,
    )
    names, arguments, finish = [], "", None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    names.append(call.function.name)
                arguments += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert len(names) == 1
    assert names[0] in ("get_weather", "get_time")
    tool = WEATHER if names[0] == "get_weather" else TIME
    jsonschema.validate(json.loads(arguments), tool["function"]["parameters"])


def test_a_conversation_with_an_earlier_tool_call_and_its_result_is_answered(smol: WorkerProcess) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    messages: Any = [
        *ASK_WEATHER,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"},
    ]
    answer = client(smol).chat.completions.create(
        model="smol", messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=20, temperature=0
    )
    assert answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls


def test_chat_logprobs_have_openai_shape_and_the_greedy_token_on_top(smol: WorkerProcess) -> None:
    answer = client(smol).chat.completions.create(
        model="smol", messages=QUESTION, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3
    )
    content = answer.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None
    assert len(content) == answer.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(entry.token for entry in content) == answer.choices[0].message.content
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy: the top token
        assert bytes(entry.bytes or []).decode() == entry.token
        assert [t.logprob for t in entry.top_logprobs] == sorted(
            (t.logprob for t in entry.top_logprobs), reverse=True
        )


def test_streamed_chat_logprobs_cover_every_token(smol: WorkerProcess) -> None:
    stream = client(smol).chat.completions.create(
        model="smol", messages=QUESTION, max_tokens=6, temperature=0, logprobs=True, stream=True
    )
    text, tokens = "", ""
    for chunk in stream:
        for choice in chunk.choices:
            text += choice.delta.content or ""
            tokens += "".join(e.token for e in (choice.logprobs.content or [])) if choice.logprobs else ""
    assert text
    assert tokens == text


def test_completion_logprobs_and_echo(smol: WorkerProcess) -> None:
    sdk = client(smol)
    answer = sdk.completions.create(
        model="smol", prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert len(logprobs.tokens or []) == 4
    assert "".join(logprobs.tokens or []) == answer.choices[0].text
    assert logprobs.text_offset == [sum(len(t) for t in (logprobs.tokens or [])[:i]) for i in range(4)]
    assert all(len(top) == 2 for top in logprobs.top_logprobs or [])
    echoed = sdk.completions.create(
        model="smol", prompt="The capital of France is", max_tokens=4, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "The capital of France is" + answer.choices[0].text
    both = sdk.completions.create(
        model="smol", prompt="The capital of France is", max_tokens=4, temperature=0, echo=True, logprobs=1
    )
    lead = both.choices[0].logprobs
    assert lead is not None
    assert "".join(lead.tokens or []) == both.choices[0].text
    assert (lead.token_logprobs or [])[0] is None  # nothing precedes the prompt's first token
    assert all(lp is not None and lp <= 0 for lp in (lead.token_logprobs or [])[1:])
    # The echoed answer's prefill is the prompt's scoring pass: the same values, up to float rounding.
    assert (lead.token_logprobs or [])[-4:] == pytest.approx(logprobs.token_logprobs, abs=1e-5)


def test_n_seeded_choices_differ_and_the_request_repeats(smol: WorkerProcess) -> None:
    def texts() -> list[str]:
        answer = client(smol).chat.completions.create(
            model="smol", messages=QUESTION, max_tokens=12, n=3, seed=11, temperature=1.0
        )
        return [c.message.content or "" for c in answer.choices]

    first = texts()
    assert len(set(first)) > 1
    assert texts() == first


def test_best_of_returns_n_choices_and_bills_every_candidate(smol: WorkerProcess) -> None:
    body = {
        "model": "smol",
        "messages": QUESTION,
        "max_tokens": 8,
        "n": 2,
        "best_of": 4,
        "temperature": 1.0,
        "seed": 3,
        "ignore_eos": True,
        "logprobs": True,
    }
    response = httpx2.post(f"{smol.address}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    assert answer["usage"]["completion_tokens"] == 4 * 8  # every candidate is billed
    scores = [sum(e["logprob"] for e in c["logprobs"]["content"]) for c in answer["choices"]]
    assert scores[0] >= scores[1]
    streamed = httpx2.post(f"{smol.address}/v1/chat/completions", json={**body, "stream": True}, timeout=30)
    assert streamed.status_code == 400
    assert streamed.json()["error"]["param"] == "stream"


def test_response_format_json_schema_is_followed(smol: WorkerProcess) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "population": {"type": "integer", "minimum": 0, "maximum": 10**9},
        },
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    answer = client(smol).chat.completions.create(
        model="smol",
        messages=QUESTION,
        max_tokens=100,
        temperature=0.7,
        seed=7,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema, "strict": True},
        },
    )
    jsonschema.validate(json.loads(answer.choices[0].message.content or ""), schema)


def test_vllm_guided_choice_through_extra_body(smol: WorkerProcess) -> None:
    answer = client(smol).chat.completions.create(
        model="smol", messages=QUESTION, max_tokens=10, extra_body={"guided_choice": ["Paris", "Lyon"]}
    )
    assert answer.choices[0].message.content in ("Paris", "Lyon")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"guided_json": {"type": "object"}, "response_format": {"type": "json_object"}}, "guided_json"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                }
            },
            "response_format",
        ),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"use_beam_search": False, "length_penalty": 1.2}, "length_penalty"),
    ],
)
def test_what_is_not_served_is_a_400_naming_it(
    smol: WorkerProcess, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(BadRequestError) as caught:
        client(smol).chat.completions.create(model="smol", messages=QUESTION, max_tokens=4, extra_body=extra)
    assert caught.value.body["param"] == param  # type: ignore[index]


def test_beam_search_returns_n_beams_and_refuses_sampling_fields(smol: WorkerProcess) -> None:
    body = {
        "model": "smol",
        "messages": QUESTION,
        "max_tokens": 8,
        "use_beam_search": True,
        "n": 2,
        "best_of": 3,
        "length_penalty": 1.0,
    }
    response = httpx2.post(f"{smol.address}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    answer = response.json()
    texts = [c["message"]["content"] for c in answer["choices"]]
    assert len(texts) == 2
    assert texts[0] != texts[1]
    assert "Paris" in texts[0]
    refused = httpx2.post(
        f"{smol.address}/v1/chat/completions", json={**body, "temperature": 0.7}, timeout=30
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "temperature"
