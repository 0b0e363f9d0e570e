"""Check an OpenAI request body and turn it into what the worker receives.

The relay is called by the OpenAI API, the signed API and the chat page, so
this is where a body is checked, for all of them, by the parser the workers
use (`inference.protocol`). Fields it does not know are passed on as sent: a
vLLM worker or a remote endpoint may know them, and our own workers refuse
them with a 400 that names them.
"""

from __future__ import annotations

from typing import Any

from inference import protocol
from inference.errors import InvalidRequest
from portal.gateway.errors import invalid, model_not_found
from registry.models import ModelTask
from registry.services.dispatch import MAX_MODEL_NAME_LENGTH, ResolvedModel, aresolve_model, valid_model_name

CHAT, COMPLETION, EMBEDDING = "chat/completions", "completions", "embeddings"
PARSERS = {
    CHAT: protocol.parse_chat,
    COMPLETION: protocol.parse_completion,
    EMBEDDING: protocol.parse_embedding,
}


def check_body(body: dict[str, Any], endpoint: str) -> None:
    """Check the fields the shared parser knows (a 400 naming the field); others pass through."""
    try:
        PARSERS[endpoint](body, strict=False)
    except InvalidRequest as exc:
        raise invalid(str(exc), param=exc.field) from None


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


async def prepare(body: Any, endpoint: str, *, stream: bool) -> tuple[ResolvedModel, dict[str, Any]]:
    """Validate `body` for `endpoint`, resolve its model and build the worker's body.

    The worker gets the served name (not an alias) and the model's default
    sampling fields where the body leaves them out. A stream always asks the
    worker for usage, which the usage record needs.
    """
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.", param=None)
    model = await resolve_requested_model(body)
    _check_task(model, endpoint)
    out = {k: v for k, v in model.default_params.items() if body.get(k) is None}
    out.update(body)
    check_body(out, endpoint)
    out["model"] = model.name
    if endpoint != EMBEDDING:
        out["stream"] = stream
        if stream:
            out["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        else:
            out.pop("stream_options", None)
    return model, out


def wants_usage(body: dict[str, Any]) -> bool:
    """Whether the client asked for the final usage chunk of a stream."""
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))
