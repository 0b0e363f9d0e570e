"""Chat messages: OpenAI's message list checked and flattened for a chat template.

Content may be a string, a list of text parts (joined) or null where OpenAI
allows it (an assistant turn that only calls tools). Parts other than text
(images, audio, files) are refused by name: these are text models. The
"developer" role is OpenAI's newer name for "system", which is what most
templates know.
"""

from __future__ import annotations

import json
from typing import Any

from inference.errors import InvalidRequest

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_TOOL_CALLS = 64

MAX_NAME_CHARS = 256
TEXT_PARTS: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}},
        "required": ["type", "text"],
    },
}
CONTENT: dict[str, Any] = {"oneOf": [{"type": "string"}, TEXT_PARTS]}
LABEL: dict[str, Any] = {"type": "string", "maxLength": MAX_NAME_CHARS, "nullable": True}
TOOL_CALL: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string", "enum": ["function"]},
        "function": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "arguments": {
                    "oneOf": [{"type": "string"}, {"type": "object"}],
                    "description": "A JSON object, or its JSON text.",
                },
            },
            "required": ["name"],
        },
    },
    "required": ["function"],
}


def _message_schema(roles: list[str], *, assistant: bool) -> dict[str, Any]:
    """One message: content may be null, and tool calls present, in assistant turns only."""
    properties: dict[str, Any] = {
        "role": {"type": "string", "enum": roles},
        "content": {**CONTENT, "nullable": True} if assistant else CONTENT,
        "name": LABEL,
        "tool_call_id": {**LABEL, "description": "Tool turns: the call this answers."},
        "tool_calls": (
            {"type": "array", "items": TOOL_CALL, "maxItems": MAX_TOOL_CALLS, "nullable": True}
            if assistant
            else {"enum": [None], "nullable": True, "description": "Assistant turns only."}
        ),
    }
    required = ["role"] if assistant else ["role", "content"]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


SCHEMA: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "items": {
        "oneOf": [
            _message_schema([r for r in ROLES if r != "assistant"], assistant=False),
            _message_schema(["assistant"], assistant=True),
        ]
    },
}


def parse_messages(name: str, value: Any) -> list[dict[str, Any]]:
    """Return the messages as template-ready dicts; raise InvalidRequest naming the bad part."""
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"'{name}' must be a non-empty list of messages.", field=name)
    return [_message(f"{name}[{i}]", raw) for i, raw in enumerate(value)]


def _message(where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"'{where}' must be an object with a 'role'.", field=where)
    role = raw.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidRequest(
            f"'{where}.role' must be one of {', '.join(ROLES)}; got {repr(role)[:40]}.", field=f"{where}.role"
        )
    for key in raw:
        if key not in ("role", "content", "name", "tool_calls", "tool_call_id"):
            raise InvalidRequest(f"'{where}.{key}' is not a message field.", field=f"{where}.{key}")
    message: dict[str, Any] = {"role": "system" if role == "developer" else role}
    calls = raw.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise InvalidRequest(
                f"'{where}.tool_calls' is only for assistant messages.", field=f"{where}.tool_calls"
            )
        message["tool_calls"] = _tool_calls(f"{where}.tool_calls", calls)
    content = raw.get("content")
    if content is None and role != "assistant":
        raise InvalidRequest(f"'{where}.content' is required for a {role} message.", field=f"{where}.content")
    message["content"] = _content(f"{where}.content", content)
    for key in ("name", "tool_call_id"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], str) or len(raw[key]) > MAX_NAME_CHARS:
                raise InvalidRequest(
                    f"'{where}.{key}' must be a string of up to 256 characters.", field=f"{where}.{key}"
                )
            message[key] = raw[key]
    return message


def _content(where: str, content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}' must be a string or a list of text parts.", field=where)
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise InvalidRequest(
                f"'{where}[{j}]' must be a text part ({{'type': 'text', 'text': ...}}); "
                f"this model reads text only, got type {repr(kind)[:40]}.",
                field=f"{where}[{j}]",
            )
        if not isinstance(part.get("text"), str):
            raise InvalidRequest(f"'{where}[{j}].text' must be a string.", field=f"{where}[{j}].text")
        parts.append(part["text"])
    return "".join(parts)


def _tool_calls(where: str, calls: Any) -> list[dict[str, Any]]:
    """Earlier tool calls of the assistant, in the shape chat templates read (arguments as an object)."""
    if not isinstance(calls, list) or len(calls) > MAX_TOOL_CALLS:
        raise InvalidRequest(f"'{where}' must be a list of at most {MAX_TOOL_CALLS} tool calls.", field=where)
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest(f"'{where}[{i}].function.name' must be a string.", field=f"{where}[{i}]")
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except (ValueError, RecursionError):  # nested deeper than Python's stack: not an object we take
                raise InvalidRequest(
                    f"'{where}[{i}].function.arguments' must be a JSON object.",
                    field=f"{where}[{i}].function.arguments",
                ) from None
        if not isinstance(arguments, dict):
            raise InvalidRequest(
                f"'{where}[{i}].function.arguments' must be a JSON object.",
                field=f"{where}[{i}].function.arguments",
            )
        entry = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out
