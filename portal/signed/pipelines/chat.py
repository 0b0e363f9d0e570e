"""The chat pipeline: messages or a prompt in, the answer text and token usage out.

`data` takes `messages` (OpenAI's list of {role, content}) or `prompt` (also
`text`, go-infer's usual field) with an optional `system`, plus `model`, the
sampling fields and the structured-output fields of `/v1/chat/completions`
(`response_format`, vLLM's `guided_*`, `structured_outputs`). They are
checked by the same parser as `/v1` (`inference.protocol`); a field it does
not take is refused by name. The model's defaults fill what is left out.
"""

from __future__ import annotations

from typing import Any

from inference.errors import InvalidRequest
from inference.protocol import CHAT_FIELDS, parse_chat
from inference.protocol.fields import SAMPLING
from inference.protocol.structured import FIELDS as STRUCTURED_FIELDS
from portal.gateway.prepare import CHAT
from portal.signed.pipelines.base import ParamsRefused, PipelineContext, optional_string
from portal.signed.pipelines.relayed import Relayed, call_relay, default_model
from registry.models import ModelTask

GO_INFER = {
    "prompt": "One user message.",
    "text": "Same as prompt (go-infer's name).",
    "system": "A system message before prompt.",
}
# What the signed chat takes of the /v1 fields: one answer, not streamed.
OPENAI_FIELDS = ["messages", "model", *SAMPLING, *STRUCTURED_FIELDS]
MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"type": "string"},
    },
    "additionalProperties": False,
}


def _data_schema() -> dict[str, Any]:
    """The /v1 declarations of the fields taken, plus go-infer's prompt fields.

    Two structured-output fields at once are refused (which would win is not
    ours to guess); the schema says so in words, as draft 4 cannot say it briefly.
    """
    properties = {
        name: {**CHAT_FIELDS[name].schema, "description": CHAT_FIELDS[name].doc} for name in OPENAI_FIELDS
    }
    properties["messages"] = {
        "type": "array",
        "minItems": 1,
        "items": MESSAGE,
        "description": "The conversation; when given, prompt, text and system are not read.",
    }
    properties["model"] = {
        "type": "string",
        "maxLength": 200,
        "pattern": "^ *[!-~][ -~]*$",  # printable ASCII, not blank (the parser allows more)
        "description": "A served model or alias; default: the chat model.",
    }
    for name, doc in GO_INFER.items():
        # Not blank: a character neither JavaScript's nor Python's whitespace.
        properties[name] = {"type": "string", "pattern": r"[^\s\x1c-\x1f\x85]", "description": doc}
    return {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "description": "At most one of " + ", ".join(STRUCTURED_FIELDS) + ".",
        "anyOf": [{"required": ["messages"]}, {"required": ["prompt"]}, {"required": ["text"]}],
        "example": {"prompt": "What is the capital of France?", "temperature": 0, "max_tokens": 32},
    }


def _messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    if data.get("messages") is not None:
        return data["messages"]
    prompt = optional_string(data, "prompt") or optional_string(data, "text")
    if prompt is None:
        raise ParamsRefused("messages or prompt is required")
    system = optional_string(data, "system")
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt}]


class ChatPipeline(Relayed):
    path = "chat"
    data_schema = _data_schema()
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
        for key in data:
            if key not in OPENAI_FIELDS and key not in GO_INFER:
                raise ParamsRefused(f"{str(key)[:64]} is not a field of the chat pipeline")
        body = {k: v for k, v in data.items() if k in OPENAI_FIELDS and v is not None}
        body["messages"] = _messages(data)
        try:
            # go-infer's ApiEntry refuses bad parameters before any work: the model is resolved
            # later (the default chat model when absent), so a stand-in names it here.
            parse_chat({"model": "default", **body}, strict=True)
        except InvalidRequest as exc:
            raise ParamsRefused(str(exc)) from None
        return body

    async def infer(self, params: dict[str, Any], *, context: PipelineContext) -> dict[str, Any]:
        body = {"model": params.get("model") or await default_model(ModelTask.GENERATE), **params}
        body["stream"] = False
        result = await call_relay(CHAT, body, context=context)
        choice = (result.get("choices") or [{}])[0]
        return {
            "answer": (choice.get("message") or {}).get("content") or "",
            "finish_reason": choice.get("finish_reason"),
            "model": result.get("model", body["model"]),
            "usage": result.get("usage") or {},
        }
