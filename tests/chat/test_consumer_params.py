"""The chat page's settings on the websocket: checked by the shared parser, a refusal naming the field.

Form values arrive as strings (numbers, the JSON schema's text); they are coerced
and the body is judged by `inference.protocol.parse_chat(strict=True)`, so what the
page may send is what a worker takes. The worker is a fake upstream (gateway logic
only) that records the body it is sent.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from asgiref.sync import sync_to_async

from portal.chat.models import AnswerFormat, Conversation, Message
from tests.chat.conftest import receive_until
from tests.gateway.conftest import add_worker, chunk, served_model, sse, upstream

__all__ = ["served_model", "upstream"]
pytestmark = pytest.mark.django_db(transaction=True)
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def schema_format(schema: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, **extra}}


async def opened(connect: Any) -> Any:
    socket = await connect()
    assert (await socket.receive_json_from(timeout=5))["type"] == "models.list"
    return socket


async def refused(socket: Any, kind: str, message: dict[str, Any]) -> dict[str, Any]:
    """Send `message`; return the error it gets, after checking that the socket still answers."""
    await socket.send_json_to(message)
    error = await socket.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == (f"{kind}.error", "invalid_param"), error
    await socket.send_json_to({"type": "models.list"})
    assert (await socket.receive_json_from(timeout=5))["type"] == "models.list"
    return error


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"temperature": 7}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": "nan"}, "top_p"),
        ({"top_p": "0"}, "top_p"),
        ({"max_tokens": "2.5"}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"seed": -1}, "seed"),
        ({"stop": ["x"] * 40}, "stop"),
        ({"frequency_penalty": "3"}, "frequency_penalty"),
        ({"no_such_knob": 1}, "no_such_knob"),  # strict: a field no worker knows
        ({"stream": False}, "stream"),  # the consumer's fields, not the page's
        ({"model": "other"}, "model"),
        ({"messages": []}, "messages"),
        ({"n": 2}, "n"),
        ({"tools": []}, "tools"),
        ("hot", "params"),
    ],
)
async def test_a_bad_sampling_param_is_refused_naming_it_and_nothing_is_saved(connect, params, field):
    socket = await opened(connect)
    message = {"type": "chat.send", "model": "tiny", "content": "hi", "params": params}
    error = await refused(socket, "chat", message)
    assert error["param"] == field
    assert field in error["message"]
    assert await Conversation.objects.acount() == 0
    assert await Message.objects.acount() == 0


@pytest.mark.parametrize(
    ("response_format", "field"),
    [
        ({"type": "xml"}, "response_format.type"),
        ("json", "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        (schema_format('{"type": "object",'), "response_format.json_schema.schema"),
        (schema_format(""), "response_format.json_schema.schema"),
        (schema_format("[1, 2]"), "response_format.json_schema.schema"),
        (schema_format(7), "response_format.json_schema.schema"),
        (schema_format("[" * 50_000 + "]" * 50_000), "response_format.json_schema.schema"),
        (schema_format(CITY, strict="yes"), "response_format.json_schema.strict"),
        (
            {"type": "json_schema", "json_schema": {"name": "a b", "schema": CITY}},
            "response_format.json_schema.name",
        ),
    ],
)
async def test_a_bad_response_format_is_refused_naming_it(connect, response_format, field):
    socket = await opened(connect)
    params = {"max_tokens": "16", "response_format": response_format}
    error = await refused(
        socket, "chat", {"type": "chat.send", "model": "tiny", "content": "hi", "params": params}
    )
    assert error["param"] == field
    assert field in error["message"]
    assert await Message.objects.acount() == 0


async def test_the_arena_refuses_bad_params_naming_them(connect):
    socket = await opened(connect)
    battle = {
        "type": "arena.send",
        "prompt": "hi",
        "model_a": "a",
        "model_b": "b",
        "params": {"max_tokens": "-5"},
    }
    error = await refused(socket, "arena", battle)
    assert error["param"] == "max_tokens"


@pytest.fixture
async def worker(served_model, upstream) -> list[httpx2.Request]:
    await sync_to_async(add_worker)(served_model, "w1")
    events = sse(
        chunk('{"city": '), chunk('"Paris"}'), chunk(None, {"prompt_tokens": 3, "completion_tokens": 2})
    )
    return upstream(lambda r: httpx2.Response(200, content=events))


async def test_form_values_are_sent_as_numbers_and_the_schema_as_an_object(connect, worker):
    socket = await opened(connect)
    params = {
        "temperature": "0.5",
        "top_p": "0.9",
        "max_tokens": "16",
        "seed": "",  # an empty input: the default
        "response_format": schema_format(json.dumps(CITY), strict=True),
    }
    await socket.send_json_to(
        {"type": "chat.send", "model": "tiny", "content": "Capital of France?", "params": params}
    )
    done = (await receive_until(socket, "chat.done"))[-1]["message"]
    assert (done["status"], done["answer_format"]) == ("complete", AnswerFormat.JSON)
    assert json.loads(done["content"]) == {"city": "Paris"}
    sent = json.loads(worker[0].content)
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"]) == (0.5, 0.9, 16)
    assert isinstance(sent["max_tokens"], int)
    assert "seed" not in sent
    assert sent["response_format"] == schema_format(CITY, strict=True)
    conversation = await Conversation.objects.aget()
    assert conversation.params["response_format"]["json_schema"]["schema"] == CITY  # restored on reload
    stored = await Message.objects.aget(role="assistant")
    assert stored.answer_format == AnswerFormat.JSON


@pytest.mark.parametrize(
    ("response_format", "shown_as"),
    [
        (None, AnswerFormat.TEXT),
        ({"type": "text"}, AnswerFormat.TEXT),
        ({"type": "json_object"}, AnswerFormat.JSON),
    ],
)
async def test_the_answer_format_follows_the_response_format(connect, worker, response_format, shown_as):
    socket = await opened(connect)
    params = {"response_format": response_format} if response_format else {}
    await socket.send_json_to({"type": "chat.send", "model": "tiny", "content": "hi", "params": params})
    done = (await receive_until(socket, "chat.done"))[-1]["message"]
    assert done["answer_format"] == shown_as
    assert json.loads(worker[0].content).get("response_format") == response_format
