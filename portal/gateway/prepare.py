"""Admission: a request body, once, into what the gateway sends (`Prepared`).

The OpenAI API, the signed API and the chat page all come through `admit`:
the model is resolved once (aliases included), the caller's permission and
limits are checked once, the body is parsed once by the parser the workers
use (`inference.protocol`) into a typed request, and the prompt's bound is
estimated once. Fields the parser does not know are passed on as sent: a
vLLM worker or a remote endpoint may know them, and our own workers refuse
them with a 400 that names them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from inference import protocol
from inference.errors import InvalidRequest
from portal.gateway.caller import Caller, new_request_id
from portal.gateway.errors import GatewayError, invalid, model_not_found, not_allowed
from portal.gateway.limits import LimitExceeded, Reservation, TokenEstimate, estimate, reserve
from portal.gateway.request_log import LogDraft
from portal.gateway.ticket import Ticket
from registry.models import DispatchPolicy, ModelTask, UsageStatus
from registry.services.dispatch import MAX_MODEL_NAME_LENGTH, ResolvedModel, aresolve_model, valid_model_name
from registry.services.prefix_index import prompt_text

if TYPE_CHECKING:
    from portal.gateway.gateway import Gateway

CHAT, COMPLETION, EMBEDDING = "chat/completions", "completions", "embeddings"
TypedRequest = protocol.ChatRequest | protocol.CompletionRequest | protocol.EmbeddingRequest
PARSERS: dict[str, Callable[..., TypedRequest]] = {
    CHAT: protocol.parse_chat,
    COMPLETION: protocol.parse_completion,
    EMBEDDING: protocol.parse_embedding,
}


@dataclass(frozen=True)
class Prepared:
    """One admitted request: its model, its typed request, its cost bound and the worker's body.

    `ticket` carries it from dispatch to its usage record; `door` is the
    endpoint it came through (and goes to on the worker).
    """

    door: str
    model: ResolvedModel
    request: TypedRequest
    estimate: TokenEstimate
    body: dict[str, Any]
    ticket: Ticket

    @property
    def request_id(self) -> str:
        return self.ticket.entry.request_id

    @property
    def include_usage(self) -> bool:
        """Whether the client asked for the final usage chunk of a stream."""
        return bool(getattr(self.request, "include_usage", False))


def _check_task(model: ResolvedModel, endpoint: str) -> None:
    wants = ModelTask.EMBED if endpoint == EMBEDDING else ModelTask.GENERATE
    if model.task != wants:
        what = "serves embeddings" if model.task == ModelTask.EMBED else "generates text"
        raise invalid(f"The model '{model.name}' {what}; it cannot serve /{endpoint}.", param="model")


async def resolve_requested_model(body: dict[str, Any]) -> ResolvedModel:
    """The served model `body["model"]` names (or aliases); 400 when missing or malformed, 404 when unknown.

    A malformed name is refused before any lookup, so it is never cached.
    """
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise invalid("'model' is required and must be a string.", param="model")
    if not valid_model_name(name):
        raise invalid(f"'model' must be 1 to {MAX_MODEL_NAME_LENGTH} printable characters.", param="model")
    model = await aresolve_model(name=name)
    if model is None:
        raise model_not_found(name)
    return model


def parse(body: dict[str, Any], endpoint: str) -> TypedRequest:
    """The typed request of the fields the shared parser knows (a 400 naming the field); others pass."""
    try:
        return PARSERS[endpoint](body, strict=False)
    except InvalidRequest as exc:
        raise invalid(str(exc), param=exc.field) from None


def with_defaults(body: dict[str, Any], model: ResolvedModel) -> dict[str, Any]:
    """The body with the model's default parameters where it leaves them out."""
    out = {k: v for k, v in model.default_params.items() if body.get(k) is None}
    out.update(body)
    return out


def for_worker(body: dict[str, Any], model: ResolvedModel, endpoint: str, *, stream: bool) -> dict[str, Any]:
    """The body the worker gets: the served name (not an alias); a stream always asks for usage.

    The usage record needs the worker's figures, whatever the client asked.
    """
    out = {**body, "model": model.name}
    if endpoint != EMBEDDING:
        out["stream"] = stream
        if stream:
            out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        else:
            out.pop("stream_options", None)
    return out


async def admit(
    gateway: Gateway, door: str, caller: Caller, body: Any, *, stream: bool, request_id: str | None
) -> Prepared:
    """Resolve, permit, parse, estimate and reserve `body` for `door`, once each.

    Raise GatewayError (400, 403, 404) or LimitExceeded (the door answers it
    in its own shape). A refusal once the caller's limits took the request is
    recorded as a usage record; one before, only if the door does not check
    the model first (`Caller.model_first`).
    """
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", param=None)
    name = str(body.get("model") or "")
    entry = caller.usage_entry(request_id=request_id or new_request_id(), endpoint=door, model_name=name)
    ticket = Ticket(gateway, entry, queue=caller.queue_terms, streamed=stream)
    if caller.log_days:
        ticket.log = LogDraft.of(body, caller.log_days)
    reserved = False
    try:
        await gateway.watch.check()  # an admin change reaches the cached lookups within a second
        model, unresolved = await _resolve(body)
        if unresolved is not None and caller.model_first:
            raise unresolved
        if model is not None and not caller.may_use(model.id):
            raise not_allowed(name)
        merged = body if model is None else with_defaults(body, model)
        cost = estimate(merged) if model is None else _priced(estimate(merged), model)
        ticket.hold(await _reserve(gateway, caller, cost))
        reserved = True
        if model is None:
            raise unresolved or model_not_found(name)
        entry.served_model_id, entry.model_name = model.id, model.name
        _check_task(model, door)
        request = parse(merged, door)
    except (LimitExceeded, GatewayError) as exc:
        if isinstance(exc, GatewayError) and (reserved or not caller.model_first):
            ticket.finish(UsageStatus.ERROR, exc)
        raise
    except asyncio.CancelledError:
        ticket.finish(UsageStatus.CANCELLED)
        raise
    ticket.prompt_estimate = cost.prompt
    if model.dispatch_policy == DispatchPolicy.CACHE_AWARE and isinstance(request, protocol.GenerateRequest):
        tools = getattr(request, "tools", None)
        ticket.prompt_key = prompt_text(request.messages, tools.functions if tools else None, request.prompts)
    ticket.choices = getattr(request, "n", 1)
    body = for_worker(merged, model, door, stream=stream)
    return Prepared(door=door, model=model, request=request, estimate=cost, body=body, ticket=ticket)


def _priced(cost: TokenEstimate, model: ResolvedModel) -> TokenEstimate:
    return replace(cost, model=model.name, input_price=model.input_price, output_price=model.output_price)


async def _resolve(body: dict[str, Any]) -> tuple[ResolvedModel | None, GatewayError | None]:
    try:
        return await resolve_requested_model(body), None
    except GatewayError as exc:
        return None, exc


async def _reserve(gateway: Gateway, caller: Caller, cost: TokenEstimate) -> Reservation | None:
    """The caller's reservation: one the door made already, else one against its quota (if any)."""
    if caller.reservation is not None or caller.quota is None:
        return caller.reservation
    return await reserve(gateway.limits, caller.quota, cost)
