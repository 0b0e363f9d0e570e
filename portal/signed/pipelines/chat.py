"""The chat pipeline: messages or a prompt in, the answer text and token usage out.

`data` takes `messages` (OpenAI's list of {role, content}) or `prompt` (also
`text`, go-infer's usual field) with an optional `system`, plus `model` and the
sampling fields below; the model's defaults fill what is left out.
"""

from __future__ import annotations

from typing import Any

from portal.gateway import relay
from portal.signed.pipelines.base import (
    ParamsRefused,
    Pipeline,
    PipelineContext,
    optional_number,
    optional_string,
)
from portal.signed.pipelines.relayed import call_relay, default_model
from registry.models import ModelTask

_INT_FIELDS: dict[str, float | None] = {"max_tokens": 1, "top_k": -1, "seed": None}
_FLOAT_FIELDS: dict[str, float | None] = {
    "temperature": 0.0,
    "top_p": 0.0,
    "presence_penalty": None,
    "frequency_penalty": None,
}
_ROLES = {"system", "user", "assistant"}


def _messages(data: dict[str, Any]) -> list[dict[str, str]]:
    messages = data.get("messages")
    if messages is None:
        prompt = optional_string(data, "prompt") or optional_string(data, "text")
        if prompt is None:
            raise ParamsRefused("messages or prompt is required")
        system = optional_string(data, "system")
        messages = [{"role": "system", "content": system}] if system else []
        return [*messages, {"role": "user", "content": prompt}]
    if not isinstance(messages, list) or not messages:
        raise ParamsRefused("messages must be a non-empty list")
    for message in messages:
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and message.get("role") in _ROLES
            and isinstance(message.get("content"), str)
        ):
            raise ParamsRefused("each message needs a role (system, user, assistant) and a string content")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _stop(data: dict[str, Any]) -> str | list[str] | None:
    stop = data.get("stop")
    if stop is None or isinstance(stop, str):
        return stop
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise ParamsRefused("stop must be a string or a list of strings")


class ChatPipeline(Pipeline):
    path = "chat"
    data_schema = {
        "type": "object",
        "description": "`messages`, or `prompt` (or `text`) with an optional `system`; the model's "
        "defaults fill the sampling fields left out, and the relay checks them again with the limits "
        "of /v1/chat/completions. Other keys are ignored.",
        "properties": {
            "messages": {
                "type": "array",
                "minItems": 1,
                "description": "The conversation; when given, prompt, text and system are not read.",
                "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "properties": {
                        "role": {"type": "string", "enum": sorted(_ROLES)},
                        "content": {"type": "string"},
                    },
                },
            },
            "prompt": {"type": "string", "pattern": r"\S", "description": "One user message."},
            "text": {"type": "string", "pattern": r"\S", "description": "Same as prompt (go-infer's name)."},
            "system": {"type": "string", "pattern": r"\S", "description": "A system message before prompt."},
            "model": {
                "type": "string",
                "pattern": r"\S",
                "description": "A served model or alias; may be left out when one chat model is served.",
            },
            "max_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number", "minimum": 0},
            "top_p": {"type": "number", "minimum": 0},
            "top_k": {"type": "integer", "minimum": -1},
            "seed": {"type": "integer"},
            "presence_penalty": {"type": "number"},
            "frequency_penalty": {"type": "number"},
            "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        },
        "anyOf": [{"required": ["messages"]}, {"required": ["prompt"]}, {"required": ["text"]}],
        "example": {"prompt": "What is the capital of France?", "temperature": 0, "max_tokens": 32},
    }
    result_schema = {
        "type": "object",
        "required": ["answer", "finish_reason", "model", "usage"],
        "properties": {
            "answer": {"type": "string"},
            "finish_reason": {"type": "string", "nullable": True, "description": "stop, length, …"},
            "model": {"type": "string"},
            "usage": {
                "type": "object",
                "properties": {
                    "prompt_tokens": {"type": "integer"},
                    "completion_tokens": {"type": "integer"},
                    "total_tokens": {"type": "integer"},
                },
            },
        },
    }

    def api_entry(self, data: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": _messages(data)}
        model = optional_string(data, "model")
        if model:
            body["model"] = model
        for key, low in _INT_FIELDS.items():
            body[key] = optional_number(data, key, kind=int, low=low)
        for key, low in _FLOAT_FIELDS.items():
            body[key] = optional_number(data, key, low=low)
        body["stop"] = _stop(data)
        return {key: value for key, value in body.items() if value is not None}

    async def infer(self, params: dict[str, Any], *, context: PipelineContext) -> dict[str, Any]:
        body = {"model": params.get("model") or await default_model(ModelTask.GENERATE), **params}
        body["stream"] = False
        result = await call_relay(relay.chat_completion, body, context=context)
        choice = (result.get("choices") or [{}])[0]
        return {
            "answer": (choice.get("message") or {}).get("content") or "",
            "finish_reason": choice.get("finish_reason"),
            "model": result.get("model", body["model"]),
            "usage": result.get("usage") or {},
        }
