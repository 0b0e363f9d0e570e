"""instructor and langchain-openai against the portal and SmolLM2, as their users run them.

Pydantic's schemas say nothing of extra keys; the server closes them (as
vLLM does), so even a 135M model at temperature 0 fills exactly the model's
fields: each answer must parse into the Pydantic object, through a forced
tool call or a JSON schema. A forced call cut short by max_tokens stays a
tool call (its arguments so far), streamed or not.
"""

from __future__ import annotations

from typing import Any

import instructor
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.clients.conftest import LivePortal

pytestmark = pytest.mark.slow
TEXT = "Extract the user: John Smith is 31 years old."


class User(BaseModel):
    """A person mentioned in the text."""

    name: str = Field(description="The person's name")
    age: int = Field(description="The person's age in years")


class Household(BaseModel):
    """Who lives at an address (a nested model: Pydantic refers to User through $defs)."""

    city: str
    head: User


JOHN = User(name="John Smith", age=31)
JOHN_CALL = '{"name": "John Smith", "age": 31}'  # the arguments, as the grammar lays JSON out


def openai_client(live: LivePortal) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.v1, api_key=live.api_key, max_retries=0, timeout=120)


def langchain(live: LivePortal, max_tokens: int = 60) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=live.v1,
        api_key=live.api_key,  # type: ignore[arg-type]
        model=live.model,
        temperature=0,
        max_tokens=max_tokens,  # type: ignore[call-arg]
        max_retries=0,
        timeout=120,
    )


@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA])
def test_instructor_extracts_a_pydantic_model(smollm2_portal: LivePortal, mode: instructor.Mode) -> None:
    client = instructor.from_openai(openai_client(smollm2_portal), mode=mode)
    user, raw = client.chat.completions.create_with_completion(
        model=smollm2_portal.model,
        response_model=User,
        messages=[{"role": "user", "content": TEXT}],
        temperature=0,
        max_tokens=60,
        max_retries=0,  # instructor's retries would hide a first answer that does not parse
    )
    assert isinstance(user, User)
    assert user.model_dump() == JOHN.model_dump()
    assert raw.choices[0].finish_reason == ("tool_calls" if mode == instructor.Mode.TOOLS else "stop")


def test_instructor_tools_mode_fills_a_nested_model(smollm2_portal: LivePortal) -> None:
    client = instructor.from_openai(openai_client(smollm2_portal), mode=instructor.Mode.TOOLS)
    household = client.chat.completions.create(
        model=smollm2_portal.model,
        response_model=Household,
        messages=[{"role": "user", "content": "John Smith, 31, lives in Paris."}],
        temperature=0,
        max_tokens=80,
        max_retries=0,
    )
    assert isinstance(household, Household)
    assert isinstance(household.head, User)


def test_langchain_with_structured_output_parses_a_pydantic_model(smollm2_portal: LivePortal) -> None:
    structured = langchain(smollm2_portal).with_structured_output(
        User, method="json_schema", include_raw=True
    )
    answer: Any = structured.invoke(TEXT)
    assert answer["parsing_error"] is None
    assert answer["parsed"] == JOHN


def test_langchain_bind_tools_calls_the_tool_streamed_or_not(smollm2_portal: LivePortal) -> None:
    bound = langchain(smollm2_portal).bind_tools([User], tool_choice="User")
    message = bound.invoke(TEXT)
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("User", JOHN.model_dump())]
    assert message.response_metadata["finish_reason"] == "tool_calls"
    chunks = list(bound.stream(TEXT))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk  # type: ignore[assignment]
    assert [(c["name"], c["args"]) for c in whole.tool_calls] == [("User", JOHN.model_dump())]


def test_a_forced_call_cut_by_max_tokens_is_a_tool_call_with_its_arguments_so_far(
    smollm2_portal: LivePortal,
) -> None:
    """Whole, the call would be JOHN_CALL (greedy, in the grammar's fixed layout); cut, a prefix of it."""
    api: Any = openai_client(smollm2_portal)
    tools: Any = [{"type": "function", "function": {"name": "User", "parameters": User.model_json_schema()}}]
    ask: Any = {
        "model": smollm2_portal.model,
        "messages": [{"role": "user", "content": TEXT}],
        "tools": tools,
        "temperature": 0,
        "max_tokens": 16,
    }
    cut = api.chat.completions.create(**ask, tool_choice="required").choices[0]
    assert cut.finish_reason == "length"
    assert cut.message.content is None
    (call,) = cut.message.tool_calls or []
    arguments = call.function.arguments
    assert call.function.name == "User"
    assert arguments
    assert JOHN_CALL.startswith(arguments)
    assert arguments != JOHN_CALL
    named = {"type": "function", "function": {"name": "User"}}
    streamed, names, finish = "", [], None
    for chunk in api.chat.completions.create(**ask, tool_choice=named, stream=True):
        for choice in chunk.choices:
            assert not choice.delta.content
            for delta in choice.delta.tool_calls or []:
                names += [delta.function.name] if delta.function and delta.function.name else []
                streamed += (delta.function.arguments or "") if delta.function else ""
            finish = choice.finish_reason or finish
    assert (names, streamed, finish) == (["User"], arguments, "length")
