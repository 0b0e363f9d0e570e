"""The gateway as the doors call it: one request, admitted then run or streamed, and the model list.

Dispatch (which worker), failover, this portal's in-flight counters,
cancellation (abort on the worker) and the usage record all happen in the
gateway (`Gateway.admit`, `run`, `stream`); the OpenAI API, the signed API
and the chat page call these functions and never talk to workers themselves.
"""

from __future__ import annotations

from typing import Any

from portal.gateway.caller import Caller
from portal.gateway.errors import GatewayError
from portal.gateway.gateway import current
from portal.gateway.prepare import CHAT, COMPLETION, EMBEDDING
from portal.gateway.streaming import ChatStream

__all__ = [
    "CHAT",
    "COMPLETION",
    "EMBEDDING",
    "Caller",
    "ChatStream",
    "GatewayError",
    "answer",
    "chat_completion",
    "completion",
    "embeddings",
    "openai_models",
    "stream_chat_completion",
    "stream_completion",
]


async def answer(door: str, body: Any, *, caller: Caller, request_id: str | None = None) -> dict[str, Any]:
    """One answer through `door`; raise GatewayError (400/403/404/502/503/504) or LimitExceeded."""
    gateway = current()
    return await gateway.run(await gateway.admit(door, caller, body, request_id=request_id))


async def opened_stream(door: str, body: Any, *, caller: Caller, request_id: str | None = None) -> ChatStream:
    """A streamed answer through `door`, opened (its first event in); raise as `answer`."""
    gateway = current()
    return await gateway.stream(await gateway.admit(door, caller, body, stream=True, request_id=request_id))


async def chat_completion(body: Any, *, caller: Caller, request_id: str | None = None) -> dict:
    return await answer(CHAT, body, caller=caller, request_id=request_id)


async def completion(body: Any, *, caller: Caller, request_id: str | None = None) -> dict:
    return await answer(COMPLETION, body, caller=caller, request_id=request_id)


async def embeddings(body: Any, *, caller: Caller, request_id: str | None = None) -> dict:
    return await answer(EMBEDDING, body, caller=caller, request_id=request_id)


async def stream_chat_completion(body: Any, *, caller: Caller, request_id: str | None = None) -> ChatStream:
    return await opened_stream(CHAT, body, caller=caller, request_id=request_id)


async def stream_completion(body: Any, *, caller: Caller, request_id: str | None = None) -> ChatStream:
    return await opened_stream(COMPLETION, body, caller=caller, request_id=request_id)


def openai_models(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Model rows (`Gateway.list_models`) as OpenAI model objects, an alias as its own with its `root`."""
    models: list[dict[str, Any]] = []
    for row in rows:
        created = int(row["created"].timestamp())
        models.append({"id": row["name"], "object": "model", "created": created, "owned_by": "portal"})
        models.extend(
            {"id": alias, "object": "model", "created": created, "owned_by": "portal", "root": row["name"]}
            for alias in row["aliases"]
        )
    return models
