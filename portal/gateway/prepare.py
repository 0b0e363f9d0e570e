"""Check an OpenAI request body and turn it into what the worker receives.

The relay is called by the OpenAI API, the signed API and the chat page, so
this is where a body is validated (a 400 naming the field), once, for all of
them. The API's DRF serializers document the same fields in the schema.
"""

from __future__ import annotations

from typing import Any

from inference.errors import InvalidRequest
from inference.sampling import SamplingParams
from inference.worker.protocol import CHAT_ROLES
from portal.gateway.errors import invalid, model_not_found
from registry.models import ModelTask
from registry.services.dispatch import MAX_MODEL_NAME_LENGTH, ResolvedModel, aresolve_model, valid_model_name

CHAT, COMPLETION, EMBEDDING = "chat/completions", "completions", "embeddings"
MAX_N = 16


def _check_messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty list of messages.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"'messages[{i}]' must be an object with a 'role'.", param=f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            roles = ", ".join(sorted(CHAT_ROLES))
            raise invalid(f"'messages[{i}].role' must be one of {roles}.", param=f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise invalid(f"'messages[{i}].content' must be a string or a list of parts.", param="messages")


def _check_text_list(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    ok = isinstance(value, str) or (
        isinstance(value, list)
        and bool(value)
        and (all(isinstance(v, str) for v in value) or all(isinstance(v, int) for v in value))
    )
    if not ok:
        raise invalid(f"'{name}' must be a string or a non-empty list of strings.", param=name)


def _check_sampling(body: dict[str, Any], defaults: dict[str, Any]) -> None:
    try:
        SamplingParams.from_request(body, defaults)
    except InvalidRequest as exc:
        raise invalid(str(exc), param=exc.field) from None
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N):
        raise invalid(f"'n' must be an integer between 1 and {MAX_N}.", param="n")
    _check_flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise invalid("'stream_options' must be an object.", param="stream_options")
    if options:
        _check_flag(options, "include_usage", where="stream_options.")


def _check_flag(body: dict[str, Any], name: str, *, where: str = "") -> None:
    if body.get(name) is not None and not isinstance(body[name], bool):
        raise invalid(f"'{where}{name}' must be a boolean.", param=f"{where}{name}")


def _check_common(body: dict[str, Any], endpoint: str) -> None:
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise invalid("'user' must be a string.", param="user")
    encoding = body.get("encoding_format")
    if endpoint == EMBEDDING and encoding is not None and encoding not in ("float", "base64"):
        raise invalid("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")


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
    _check_common(body, endpoint)
    if endpoint == CHAT:
        _check_messages(body)
    elif endpoint == COMPLETION:
        _check_text_list(body, "prompt")
    else:
        _check_text_list(body, "input")
    if endpoint != EMBEDDING:
        _check_sampling(body, model.default_params)
    out = {k: v for k, v in model.default_params.items() if body.get(k) is None}
    out.update(body)
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
