"""Tools: OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`, checked into a `Tools`.

`tool_choice` "none" hides nothing but forbids calls, "auto" lets the model
choose, "required" and a named function force a call. A forced call is a
structured output: the answer is constrained to `{"name": ..., "arguments":
...}` with the function's parameters schema (its objects closed, as for
`response_format`), so its arguments always parse, and a call cut off by
max_tokens is still a call: its name and the arguments written so far.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from inference.errors import InvalidRequest
from inference.protocol.structured import closed_objects
from inference.sampling import Guide

MAX_TOOLS = 128
FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

TOOLS_SCHEMA: dict[str, Any] = {
    "type": "array",
    "maxItems": MAX_TOOLS,
    "items": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "enum": ["function"]},
            "function": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "pattern": FUNCTION_NAME.pattern},
                    "description": {"type": "string", "nullable": True},
                    "parameters": {"type": "object", "nullable": True},
                    "strict": {"type": "boolean", "nullable": True},
                },
                "required": ["name"],
            },
        },
        "required": ["type", "function"],
    },
}
TOOL_CHOICE_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {"type": "string", "enum": ["none", "auto", "required"]},
        {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["function"]},
                "function": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}},
                    "required": ["name"],
                },
            },
            "required": ["type", "function"],
        },
    ]
}


@dataclass(frozen=True)
class Tools:
    """The functions offered and how the model may call them."""

    functions: tuple[dict[str, Any], ...]  # OpenAI's tool objects, as templates read them
    choice: str  # "none", "auto", "required" or "function"
    name: str | None = None  # the forced function when choice == "function"
    parallel: bool = True

    @property
    def forced(self) -> bool:
        return self.choice in ("required", "function")

    @property
    def callable(self) -> list[dict[str, Any]]:
        """The functions a forced call may name: the one named, or every one for "required"."""
        return [f for f in self.functions if self.choice != "function" or f["function"]["name"] == self.name]

    def guide(self) -> Guide | None:
        """The constraint of a forced call: one JSON object naming a function and its arguments."""
        if not self.forced:
            return None
        functions = self.callable
        options = [
            {
                "type": "object",
                "properties": {
                    "name": {"const": f["function"]["name"]},
                    "arguments": _arguments(f, "" if len(functions) == 1 else f"/anyOf/{i}"),
                },
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for i, f in enumerate(functions)
        ]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        return Guide("json_schema", json.dumps(schema, separators=(",", ":")), "tool_choice")


def _arguments(function: dict[str, Any], option: str) -> dict[str, Any]:
    """The function's parameters, closed, as the `arguments` of the option at JSON pointer `option`."""
    try:
        return _moved(closed_objects(function["function"]["parameters"]), f"{option}/properties/arguments")
    except RecursionError:
        raise InvalidRequest("'tools' is nested too deeply.", field="tools") from None


def _moved(schema: Any, at: str) -> Any:
    """`schema` placed at JSON pointer `at` of a larger one: its local `$ref`s (`#/$defs/...`) follow."""
    if isinstance(schema, list):
        return [_moved(item, at) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: f"#{at}{value[1:]}"
        if key == "$ref" and isinstance(value, str) and value.startswith("#")
        else _moved(value, at)
        for key, value in schema.items()
    }


def parse_tools(values: dict[str, Any]) -> Tools | None:
    """Read the checked body's tool fields; None when it offers no tools."""
    raw = values.get("tools")
    choice = values.get("tool_choice")
    parallel = values.get("parallel_tool_calls", True)
    if raw is None or raw == []:
        if choice not in (None, "none"):
            raise InvalidRequest("'tool_choice' needs 'tools'.", field="tool_choice")
        return None
    functions = tuple(_tool(i, t) for i, t in enumerate(_list(raw)))
    names = [f["function"]["name"] for f in functions]
    if len(set(names)) != len(names):
        raise InvalidRequest("'tools' names a function twice.", field="tools")
    if choice is None:
        return Tools(functions, "auto", parallel=parallel)
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise InvalidRequest(
                "'tool_choice' must be none, auto, required or a function.", field="tool_choice"
            )
        return Tools(functions, choice, parallel=parallel)
    name = (choice.get("function") or {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest(
            "'tool_choice' must be none, auto, required or {'type': 'function', 'function': {'name': ...}}.",
            field="tool_choice",
        )
    if name not in names:
        raise InvalidRequest(
            f"'tool_choice' names '{name[:64]}', which is not in 'tools'.", field="tool_choice"
        )
    return Tools(functions, "function", name, parallel=parallel)


def _list(raw: Any) -> list[Any]:
    if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
        raise InvalidRequest(f"'tools' must be a list of at most {MAX_TOOLS} tools.", field="tools")
    return raw


def _tool(index: int, raw: Any) -> dict[str, Any]:
    where = f"tools[{index}]"
    if (
        not isinstance(raw, dict)
        or raw.get("type") != "function"
        or not isinstance(raw.get("function"), dict)
    ):
        raise InvalidRequest(f"'{where}' must be {{'type': 'function', 'function': {{...}}}}.", field=where)
    function = raw["function"]
    name = function.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.match(name):
        raise InvalidRequest(
            f"'{where}.function.name' must be 1 to 64 letters, digits, '_', '.' or '-'.",
            field=f"{where}.function.name",
        )
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidRequest(
            f"'{where}.function.parameters' must be a JSON schema object.", field=f"{where}.function"
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequest(f"'{where}.function.description' must be a string.", field=f"{where}.function")
    if function.get("strict") is not None and not isinstance(function["strict"], bool):
        raise InvalidRequest(f"'{where}.function.strict' must be a boolean.", field=f"{where}.function")
    clean: dict[str, Any] = {"name": name}
    if description:
        clean["description"] = description
    clean["parameters"] = parameters or {"type": "object", "properties": {}}
    return {"type": "function", "function": clean}


TOOL_CALL_TAG = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def extract_calls(text: str, tools: Tools) -> tuple[str | None, list[dict[str, Any]]]:
    """Split an answer into its content and its tool calls, in OpenAI's `tool_calls` shape.

    A forced call is the whole answer (the grammar made it one JSON object);
    otherwise calls are `<tool_call>{...}</tool_call>` blocks, the convention
    of Hermes-style templates and of our fallback prompt, or an answer that is
    nothing but such an object. Text that does not parse stays content.
    """
    if tools.choice == "none":
        return text, []
    blocks = TOOL_CALL_TAG.findall(text)
    candidates = blocks or [text.strip()]
    names = {f["function"]["name"] for f in tools.functions}
    calls = [call for raw in candidates if (call := _call(raw, names)) is not None]
    if not calls or (blocks and len(calls) != len(blocks)):
        return text, []
    if not tools.parallel:
        calls = calls[:1]
    content = TOOL_CALL_TAG.sub("", text).strip() if blocks else ""
    return content or None, calls


# A forced call's answer up to where it stopped: the name (whole or begun), then the arguments' text.
FORCED_PREFIX = re.compile(
    r'\s*\{\s*"name"\s*:\s*"(?P<name>[^"]*)(?P<named>")?(?:\s*,\s*"arguments"\s*:\s*(?P<arguments>.*))?',
    re.DOTALL,
)


def cut_call(text: str, tools: Tools) -> list[dict[str, Any]]:
    """The call in a forced answer that stopped early (max_tokens, a stop string), as vLLM returns it.

    The arguments are the text written so far, which may not parse; the name
    is the function the answer names or has begun to name, when only one
    fits. An answer too short to tell which function gets no call.
    """
    match = FORCED_PREFIX.match(text)
    begun = match["name"] if match else ""
    names = [f["function"]["name"] for f in tools.callable]
    fits = [n for n in names if (n == begun if match and match["named"] else n.startswith(begun))]
    if len(fits) != 1:
        return []
    arguments = (match["arguments"] if match else None) or ""
    return [_tool_call(fits[0], arguments)]


def _tool_call(name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def _call(raw: str, names: set[str]) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if not isinstance(arguments, dict):
        return None
    return _tool_call(value["name"], json.dumps(arguments, ensure_ascii=False))
