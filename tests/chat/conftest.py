"""Fixtures for the chat consumer tests: a user and a connected websocket communicator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model

from portal.chat.consumers import ChatConsumer


@pytest.fixture
async def chat_user(transactional_db: None) -> Any:
    return await database_sync_to_async(get_user_model().objects.create_user)("ada", password="pw-123456")


Connect = Callable[..., Any]


@pytest.fixture
async def connect(chat_user: Any) -> AsyncIterator[Connect]:
    """Open a websocket as `chat_user` (or as `user=`); close every socket at the end."""
    opened: list[WebsocketCommunicator] = []

    async def open_socket(user: Any = chat_user) -> WebsocketCommunicator:
        communicator = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
        communicator.scope["user"] = user
        connected, _ = await communicator.connect()
        assert connected
        opened.append(communicator)
        return communicator

    yield open_socket
    for communicator in opened:
        await communicator.disconnect()


async def receive_until(communicator: WebsocketCommunicator, kind: str, timeout: float = 20) -> list[dict]:
    """Return every message received up to and including the first of type `kind`."""
    seen: list[dict] = []
    while True:
        message = await communicator.receive_json_from(timeout=timeout)
        seen.append(message)
        if message["type"] == kind:
            return seen
