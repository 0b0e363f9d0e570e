"""The chat websocket against malformed input, hostile upstream figures and per-user limits.

Nothing a client sends ends the consumer: a bad message gets an error on that
socket, which keeps working. The worker is a fake upstream (gateway logic only).
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from asgiref.sync import sync_to_async

from tests.chat.conftest import receive_until
from tests.gateway.conftest import add_worker, chunk, served_model, sse, upstream

__all__ = ["served_model", "upstream"]
pytestmark = pytest.mark.django_db(transaction=True)
HOSTILE = {"prompt_tokens": "<img src=x onerror=alert(1)>", "completion_tokens": "<b>9</b>"}


async def opened(connect: Any) -> Any:
    socket = await connect()
    assert (await socket.receive_json_from(timeout=5))["type"] == "models.list"
    return socket


async def still_answers(socket: Any) -> None:
    await socket.send_json_to({"type": "models.list"})
    assert (await socket.receive_json_from(timeout=5))["type"] == "models.list"


@pytest.mark.parametrize("bad_id", [float("inf"), float("nan"), 1.5, True, "12abc", 2**70, -3, [1], {"a": 1}])
async def test_a_malformed_conversation_id_is_refused_naming_it(connect, bad_id):
    socket = await opened(connect)
    await socket.send_json_to({"type": "chat.send", "model": "m", "content": "hi", "conversation_id": bad_id})
    error = await socket.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("chat.error", "invalid_request")
    assert "conversation_id" in error["message"]
    await still_answers(socket)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "chat.send", "model": {"name": "m"}, "content": "hi"},
        {"type": "chat.send", "model": "m", "content": ["hi"]},
        {"type": "arena.vote", "battle_id": float("-inf"), "choice": "a"},
        {"type": "arena.vote", "battle_id": 1, "choice": 7},
        {"type": "arena.send", "prompt": {"x": 1}},
        {"type": ["chat.send"]},
    ],
)
async def test_a_field_of_the_wrong_type_is_an_error_on_that_socket(connect, message):
    socket = await opened(connect)
    await socket.send_json_to(message)
    error = await socket.receive_json_from(timeout=5)
    assert error["type"].endswith("error")
    await still_answers(socket)


@pytest.mark.parametrize(
    "frame",
    [
        {"text_data": "{not json"},
        {"text_data": "[" * 100_000 + "]" * 100_000},
        {"text_data": '{"type": "chat.send", "model": "m", "content": "\\ud800"}'},
        {"bytes_data": b"\x00\x01binary"},
    ],
)
async def test_a_frame_that_is_not_json_text_is_refused(connect, frame):
    socket = await opened(connect)
    await socket.send_to(**frame)
    error = await socket.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("error", "invalid_request")
    await still_answers(socket)


@pytest.fixture
async def worker(served_model, upstream) -> None:
    await sync_to_async(add_worker)(served_model, "w1")
    events = sse(chunk("Hello"), chunk(" there"), chunk(None, HOSTILE))
    upstream(lambda r: httpx2.Response(200, content=events))


async def test_hostile_usage_figures_reach_the_page_as_numbers(connect, worker):
    socket = await opened(connect)
    await socket.send_json_to({"type": "chat.send", "model": "tiny", "content": "hi"})
    done = (await receive_until(socket, "chat.done"))[-1]["message"]
    assert done["content"] == "Hello there"
    assert done["completion_tokens"] == 2  # the chunks relayed, not the upstream's text
    battle = {"type": "arena.send", "prompt": "hi", "model_a": "tiny", "model_b": "tiny-alias"}
    await socket.send_json_to(battle)
    sides = [m for m in await receive_until(socket, "arena.finished") if m["type"] == "arena.done"]
    assert len(sides) == 2
    for side in sides:
        assert (side["prompt_tokens"], side["completion_tokens"]) == (0, 2)
    assert "onerror" not in json.dumps(sides)


async def test_chat_users_have_their_own_limits(connect, worker, settings):
    settings.CHAT_USER_RPM = 1
    socket = await opened(connect)
    await socket.send_json_to({"type": "chat.send", "model": "tiny", "content": "one"})
    first = (await receive_until(socket, "chat.done"))[-1]["message"]
    await socket.send_json_to({"type": "chat.send", "model": "tiny", "content": "two"})
    second = (await receive_until(socket, "chat.done"))[-1]["message"]
    assert first["status"] == "complete"
    assert second["status"] == "error"
    assert "1 requests per minute" in second["error"]
    assert second["retryable"] is True


async def test_an_answer_larger_than_the_users_token_limit_is_refused_for_good(connect, worker, settings):
    settings.CHAT_USER_TPM = 50
    socket = await opened(connect)
    message = {"type": "chat.send", "model": "tiny", "content": "hi", "params": {"max_tokens": 100}}
    await socket.send_json_to(message)
    done = (await receive_until(socket, "chat.done"))[-1]["message"]
    assert (done["status"], done["retryable"]) == ("error", False)
    assert "max_tokens" in done["error"]
