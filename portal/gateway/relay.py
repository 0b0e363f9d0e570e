"""The gateway relay: the one way to send a request to a worker.

Dispatch (which worker), failover, this portal's in-flight counters,
cancellation (abort on the worker) and the usage record all happen here; the
OpenAI API, the signed API and the chat page call these functions and never
talk to workers themselves.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from channels.db import database_sync_to_async

from fleet.selectors import list_on_demand_model_names
from portal.gateway.caller import Caller, new_request_id
from portal.gateway.errors import GatewayError, worker_failed
from portal.gateway.gateway import Gateway, current
from portal.gateway.limits import estimate_prompt_tokens
from portal.gateway.prepare import CHAT, COMPLETION, EMBEDDING, prepare
from portal.gateway.streaming import ChatStream
from portal.gateway.ticket import Ticket
from portal.gateway.upstream import error_from_response, with_failover, worker_headers, worker_url
from registry.models import UsageStatus
from registry.services.dispatch import ResolvedModel, list_online_models

__all__ = [
    "Caller",
    "ChatStream",
    "GatewayError",
    "chat_completion",
    "completion",
    "embeddings",
    "list_models",
    "stream_chat_completion",
    "stream_completion",
]


async def _send(
    gateway: Gateway, model: ResolvedModel, out: dict[str, Any], endpoint: str, ticket: Ticket
) -> dict[str, Any]:
    """POST to a worker, failing over to others while workers refuse or fail."""

    async def attempt(worker: Any) -> dict[str, Any]:
        headers = worker_headers(worker, ticket.entry.request_id)
        response = await gateway.client.post(worker_url(worker, endpoint), json=out, headers=headers)
        if response.status_code != 200:
            raise error_from_response(response.status_code, response.content)
        try:
            result = response.json()
        except ValueError:
            result = None
        if not isinstance(result, dict):
            error = worker_failed("its answer is not a JSON object.")
            error.fault = "worker"
            raise error
        ticket.first_token()
        return result

    return await with_failover(model, ticket, attempt)


async def _unary(body: Any, endpoint: str, caller: Caller, request_id: str | None) -> dict[str, Any]:
    gateway = current()
    request_id = request_id or new_request_id()
    name = body.get("model") if isinstance(body, dict) else None
    entry = caller.usage_entry(request_id=request_id, endpoint=endpoint, model_name=str(name or ""))
    ticket = Ticket(gateway, entry, reservation=caller.reservation, queue=caller.queue_terms)
    try:
        model, out = await prepare(body, endpoint, stream=False)
        ticket.entry.served_model_id, ticket.entry.model_name = model.id, model.name
        ticket.prompt_estimate = estimate_prompt_tokens(out)
        result = await _send(gateway, model, out, endpoint, ticket)
    except GatewayError as exc:
        ticket.finish(UsageStatus.ERROR, exc)
        raise
    except asyncio.CancelledError:
        # The client went away (Django cancels the view): stop the generation on the worker.
        ticket.finish(UsageStatus.CANCELLED)
        raise
    ticket.set_usage(result.get("usage"))
    ticket.finish()
    await ticket.recorded()
    return result


async def chat_completion(body: dict, *, caller: Caller, request_id: str | None = None) -> dict:
    """A non-streaming chat completion; raise GatewayError (400/404/502/503/504)."""
    return await _unary(body, CHAT, caller, request_id)


async def completion(body: dict, *, caller: Caller, request_id: str | None = None) -> dict:
    """A non-streaming text completion; raise GatewayError."""
    return await _unary(body, COMPLETION, caller, request_id)


async def embeddings(body: dict, *, caller: Caller, request_id: str | None = None) -> dict:
    """Embeddings of `body["input"]`; raise GatewayError."""
    return await _unary(body, EMBEDDING, caller, request_id)


def stream_chat_completion(body: dict, *, caller: Caller, request_id: str | None = None) -> ChatStream:
    """A streaming chat completion; call `await stream.open()` then iterate chunks."""
    return ChatStream(current(), body, CHAT, caller=caller, request_id=request_id)


def stream_completion(body: dict, *, caller: Caller, request_id: str | None = None) -> ChatStream:
    """A streaming text completion, as `stream_chat_completion`."""
    return ChatStream(current(), body, COMPLETION, caller=caller, request_id=request_id)


def _timestamp(value: datetime) -> int:
    return int(value.timestamp())


def _models_to_list() -> list[dict]:
    return list_online_models(on_demand=list_on_demand_model_names())


async def list_models() -> list[dict]:
    """Served models with an online worker or started on a request, aliases included, as OpenAI objects."""
    rows = await database_sync_to_async(_models_to_list)()
    models: list[dict] = []
    for row in rows:
        created = _timestamp(row["created"])
        models.append({"id": row["name"], "object": "model", "created": created, "owned_by": "portal"})
        models.extend(
            {"id": alias, "object": "model", "created": created, "owned_by": "portal", "root": row["name"]}
            for alias in row["aliases"]
        )
    return models
