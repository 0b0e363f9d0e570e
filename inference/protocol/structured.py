"""Structured outputs: OpenAI's `response_format` and vLLM's guided fields, read into one `Guide`.

A request may ask for one form of output: `response_format` (json_object or
json_schema; "text" asks for nothing), vLLM's `guided_json`, `guided_regex`,
`guided_choice`, `guided_grammar`, or the `structured_outputs` object of newer
vLLM releases (json, regex, choice, grammar, json_object). Asking twice is a
400: which one should win is not ours to guess. Whether a schema or grammar
compiles is the engine's check (a 400 naming the same field).

A JSON schema's objects are closed where the schema leaves them open by
omission (`closed_objects`), as vLLM's default backend does: Pydantic's
schemas, which instructor and langchain send, omit `additionalProperties`,
and a small model that may add keys wanders into them until max_tokens.
"""

from __future__ import annotations

import json
import re
from typing import Any

from inference.errors import InvalidRequest
from inference.sampling import Guide

MAX_SPEC_CHARS = 64 * 1024
MAX_CHOICES = 256
SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# A JSON schema (vLLM takes its JSON text too; the schema does not say so, as it cannot say "JSON").
JSON_SCHEMA: dict[str, Any] = {"type": "object"}
# "text" and "json_object" read nothing else; "json_schema" reads its `json_schema` object.
RESPONSE_FORMAT_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"type": {"type": "string", "enum": ["text", "json_object"]}},
            "required": ["type"],
        },
        {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": ["json_schema"]},
                "json_schema": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "pattern": SCHEMA_NAME.pattern},
                        "description": {"type": "string", "nullable": True},
                        "schema": {**JSON_SCHEMA, "nullable": True},
                        "strict": {"type": "boolean", "nullable": True},
                    },
                    "required": ["name"],
                },
            },
            "required": ["type", "json_schema"],
        },
    ]
}
SPEC_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_SPEC_CHARS}
CHOICES = {
    "type": "array",
    "items": {"type": "string", "minLength": 1},
    "minItems": 1,
    "maxItems": MAX_CHOICES,
}
STRUCTURED_OUTPUTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "At most one of these set (not null, not false).",
    "properties": {
        "json": {**JSON_SCHEMA, "nullable": True},
        "regex": {**SPEC_TEXT, "nullable": True},
        "choice": {**CHOICES, "nullable": True},
        "grammar": {**SPEC_TEXT, "nullable": True},
        "json_object": {"type": "boolean", "nullable": True},
    },
    "additionalProperties": False,
}
GUIDED_SCHEMAS: dict[str, tuple[dict[str, Any], str]] = {
    "guided_json": (JSON_SCHEMA, "vLLM: a JSON schema the answer follows."),
    "guided_regex": (SPEC_TEXT, "vLLM: a regular expression the answer matches."),
    "guided_choice": (CHOICES, "vLLM: the answer is one of these strings."),
    "guided_grammar": (SPEC_TEXT, "vLLM: a grammar (Lark, or GBNF-style EBNF) the answer follows."),
}
FIELDS = ("response_format", *GUIDED_SCHEMAS, "structured_outputs")


def read_guide(values: dict[str, Any]) -> Guide | None:
    """The one guide the checked body asks for (None for free text); 400 when it asks for two."""
    guides = [(name, _guide(name, values[name])) for name in FIELDS if values.get(name) is not None]
    guides = [(name, guide) for name, guide in guides if guide is not None]
    if len(guides) > 1:
        first, second = guides[0][0], guides[1][0]
        raise InvalidRequest(f"'{second}' and '{first}' both constrain the answer; send one.", field=second)
    return guides[0][1] if guides else None


def _guide(name: str, value: Any) -> Guide | None:
    if name == "response_format":
        return _response_format(name, value)
    if name == "structured_outputs":
        return _structured_outputs(name, value)
    return _vllm(name, name.removeprefix("guided_"), value)


def _response_format(name: str, value: Any) -> Guide | None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return Guide("json_object", "", name)
    if kind != "json_schema":
        raise InvalidRequest(
            f"'{name}.type' must be 'text', 'json_object' or 'json_schema'; got {repr(kind)[:40]}.",
            field=f"{name}.type",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest(f"'{name}.json_schema' must be an object.", field=f"{name}.json_schema")
    if not isinstance(spec.get("name"), str) or not SCHEMA_NAME.match(spec["name"]):
        raise InvalidRequest(
            f"'{name}.json_schema.name' must be 1 to 64 letters, digits, '_' or '-'.",
            field=f"{name}.json_schema.name",
        )
    if spec.get("description") is not None and not isinstance(spec["description"], str):
        raise InvalidRequest(
            f"'{name}.json_schema.description' must be a string.", field=f"{name}.json_schema.description"
        )
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise InvalidRequest(
            f"'{name}.json_schema.strict' must be a boolean.", field=f"{name}.json_schema.strict"
        )
    schema = {} if spec.get("schema") is None else spec["schema"]  # null reads as absent
    return Guide("json_schema", _schema_text(f"{name}.json_schema.schema", schema), name)


def _structured_outputs(name: str, value: Any) -> Guide | None:
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{name}' must be an object.", field=name)
    kinds = [k for k in value if value[k] is not None and value[k] is not False]
    for key in value:
        if key not in ("json", "regex", "choice", "grammar", "json_object"):
            raise InvalidRequest(f"'{name}.{key}' is not supported.", field=f"{name}.{key}")
    if len(kinds) > 1:
        raise InvalidRequest(
            f"'{name}' must set one of json, regex, choice, grammar, json_object.", field=name
        )
    if not kinds:
        return None
    key = kinds[0]
    if key == "json_object":
        if value[key] is not True:
            raise InvalidRequest(f"'{name}.json_object' must be a boolean.", field=f"{name}.json_object")
        return Guide("json_object", "", name)
    guide = _vllm(f"{name}.{key}", "json" if key == "json" else key, value[key])
    return Guide(guide.kind, guide.spec, name)


def _vllm(name: str, kind: str, value: Any) -> Guide:
    if kind == "json":
        return Guide("json_schema", _schema_text(name, value), name)
    if kind == "choice":
        if (
            not isinstance(value, list)
            or not value
            or len(value) > MAX_CHOICES
            or not all(isinstance(c, str) and c for c in value)
        ):
            raise InvalidRequest(
                f"'{name}' must be a list of 1 to {MAX_CHOICES} non-empty strings.", field=name
            )
        return Guide("choice", json.dumps(value), name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"'{name}' must be a non-empty string.", field=name)
    if len(value) > MAX_SPEC_CHARS:
        raise InvalidRequest(f"'{name}' must be at most {MAX_SPEC_CHARS} characters.", field=name)
    return Guide(kind, value, name)


# Keywords whose values are schemas: one schema, a list of them, or a map of names to them.
ONE_SCHEMA = (
    "items", "additionalProperties", "additionalItems", "contains", "not", "if", "then", "else",
    "propertyNames", "unevaluatedItems", "unevaluatedProperties",
)  # fmt: skip
SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems", "items")
SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def closed_objects(schema: Any, *, close: bool = True) -> Any:
    """`schema` with `additionalProperties: false` on each object that lists properties and says nothing.

    An explicit `additionalProperties` (true or a schema) stays. Left open:
    an object listing no properties (closing it would allow only `{}`), and
    objects combined with others (`allOf` branches, a schema beside its own
    `allOf` or `$ref`), where closing one part would refuse the other's keys.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in ONE_SCHEMA:
        if isinstance(out.get(key), dict):
            out[key] = closed_objects(out[key])
    for key in SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(item) for item in out[key]]
    for key in SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed_objects(item) for name, item in out[key].items()}
    if isinstance(out.get("allOf"), list):
        out["allOf"] = [closed_objects(item, close=False) for item in out["allOf"]]
    lists_properties = "properties" in out or "patternProperties" in out
    combined = "allOf" in out or "$ref" in out or "unevaluatedProperties" in out
    if close and lists_properties and not combined and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def closed_schema(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """`closed_objects(schema)`, or a 400 naming `name` when it is nested too deeply to walk."""
    try:
        return closed_objects(schema)
    except RecursionError:
        raise InvalidRequest(f"'{name}' is nested too deeply.", field=name) from None


def _schema_text(name: str, schema: Any) -> str:
    if isinstance(schema, str):  # vLLM accepts the schema as JSON text too
        try:
            schema = json.loads(schema)
        except (ValueError, RecursionError):
            raise InvalidRequest(f"'{name}' is not valid JSON.", field=name) from None
    if not isinstance(schema, dict):
        raise InvalidRequest(f"'{name}' must be a JSON schema object.", field=name)
    try:
        text = json.dumps(schema, separators=(",", ":"))
    except RecursionError:
        raise InvalidRequest(f"'{name}' is nested too deeply.", field=name) from None
    if len(text) > MAX_SPEC_CHARS:
        raise InvalidRequest(f"'{name}' must be at most {MAX_SPEC_CHARS} characters of JSON.", field=name)
    return json.dumps(closed_schema(name, schema), separators=(",", ":"))
