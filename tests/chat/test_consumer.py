"""The chat websocket without a worker: refusal, validation, and errors shown inline, never a hang."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from portal.chat.consumers import UNAUTHENTICATED_CLOSE_CODE, ChatConsumer
from portal.chat.models import AnswerStatus, ArenaBattle, Message
from registry.models import ServedModel
from tests.chat.conftest import receive_until

pytestmark = pytest.mark.django_db(transaction=True)


async def test_unauthenticated_socket_is_refused(transactional_db):
    communicator = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
    communicator.scope["user"] = AnonymousUser()
    connected, code = await communicator.connect()
    assert not connected
    assert code == UNAUTHENTICATED_CLOSE_CODE


async def test_connect_sends_only_models_with_an_online_worker(connect):
    await database_sync_to_async(ServedModel.objects.create)(name="no-worker-model")
    socket = await connect()
    message = await socket.receive_json_from(timeout=5)
    assert message == {"type": "models.list", "models": []}


async def test_unknown_message_type_and_missing_model_are_reported(connect):
    socket = await connect()
    await socket.receive_json_from(timeout=5)
    await socket.send_json_to({"type": "chat.explode"})
    assert (await socket.receive_json_from(timeout=5))["type"] == "error"
    await socket.send_json_to({"type": "chat.send", "content": "hi"})
    error = await socket.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("chat.error", "no_model")
    bad = {"type": "chat.send", "content": "hi", "model": "m", "params": {"temperature": 7}}
    await socket.send_json_to(bad)
    error = await socket.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("chat.error", "invalid_param")


async def test_no_online_worker_is_saved_as_a_retryable_error(connect):
    await database_sync_to_async(ServedModel.objects.create)(name="lonely")
    socket = await connect()
    await socket.receive_json_from(timeout=5)
    await socket.send_json_to({"type": "chat.send", "model": "lonely", "content": "Anyone there?"})
    messages = await receive_until(socket, "chat.done")
    started, done = messages[0], messages[-1]
    assert started["type"] == "chat.started"
    answer = done["message"]
    assert (answer["status"], answer["retryable"]) == (AnswerStatus.ERROR, True)
    assert "worker" in answer["error"].lower()
    stored = await Message.objects.aget(role="assistant")
    assert stored.status == AnswerStatus.ERROR
    # Retrying replaces the failed answer rather than piling up errors.
    retry = {"type": "chat.retry", "model": "lonely", "conversation_id": started["conversation_id"]}
    await socket.send_json_to(retry)
    await receive_until(socket, "chat.done")
    assert await Message.objects.filter(role="assistant").acount() == 1


async def test_unknown_model_is_not_retryable(connect):
    socket = await connect()
    await socket.receive_json_from(timeout=5)
    await socket.send_json_to({"type": "chat.send", "model": "no-such-model", "content": "hi"})
    done = (await receive_until(socket, "chat.done"))[-1]
    assert (done["message"]["status"], done["message"]["retryable"]) == ("error", False)


async def test_vote_reveals_the_hidden_names_once(connect, chat_user):
    battle = await ArenaBattle.objects.acreate(
        user=chat_user, prompt="p", model_a="alpha", model_b="beta", anonymous=True
    )
    socket = await connect()
    await socket.receive_json_from(timeout=5)
    await socket.send_json_to({"type": "arena.vote", "battle_id": battle.pk, "choice": "b"})
    revealed = await socket.receive_json_from(timeout=5)
    assert revealed["type"] == "arena.revealed"
    assert (revealed["model_a"], revealed["model_b"], revealed["choice"]) == ("alpha", "beta", "b")
    await socket.send_json_to({"type": "arena.vote", "battle_id": battle.pk, "choice": "a"})
    again = await socket.receive_json_from(timeout=5)
    assert (again["type"], again["code"]) == ("arena.error", "already_voted")


async def test_anonymous_battle_needs_two_models_with_workers(connect):
    socket = await connect()
    await socket.receive_json_from(timeout=5)
    await socket.send_json_to({"type": "arena.send", "prompt": "hi", "anonymous": True})
    error = await socket.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("arena.error", "not_enough_models")
