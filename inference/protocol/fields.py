"""The fields of each request body: how a value is checked and how the schema documents it.

Schemas are OpenAPI 3.0 schema objects (JSON Schema draft 4 as OpenAPI reads it).

One declaration per field serves both the parser and the OpenAPI document,
so what the API says it takes and what it takes cannot drift apart. A check
gets the field's name and a value that is not None, and returns the value
the parser keeps or raises InvalidRequest naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inference.errors import InvalidRequest
from inference.sampling import FIELD_CHECKS, MAX_INT, MAX_SEED, MAX_STOP_CHARS, MAX_STOPS

Check = Callable[[str, Any], Any]

MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_MODEL_NAME = 200  # as the registry stores names (ServedModel, ModelAlias)
MAX_USER_CHARS = 256
MAX_METADATA_KEYS = 16
MAX_METADATA_CHARS = 512


@dataclass(frozen=True)
class Field:
    """One body field: its check, its JSON schema and a line of documentation."""

    check: Check
    schema: dict[str, Any]
    doc: str
    required: bool = False
    examples: list[Any] = field(default_factory=list)


def integer(low: int, high: int) -> Check:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidRequest(f"'{name}' must be an integer between {low} and {high}.", field=name)
        return value

    return check


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean.", field=name)
    return value


def text(max_chars: int) -> Check:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise InvalidRequest(f"'{name}' must be a string.", field=name)
        if len(value) > max_chars:
            raise InvalidRequest(f"'{name}' must be at most {max_chars} characters.", field=name)
        return value

    return check


def model_name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest("'model' is required and must be a string.", field=name)
    if len(value) > MAX_MODEL_NAME or not value.isprintable() or value.isspace():
        raise InvalidRequest(f"'model' must be 1 to {MAX_MODEL_NAME} printable characters.", field=name)
    return value


def metadata(name: str, value: Any) -> dict[str, str]:
    """OpenAI's metadata: at most 16 string pairs; kept for the caller, not used by the model."""
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA_KEYS
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        or any(len(k) > 64 or len(v) > MAX_METADATA_CHARS for k, v in value.items())
    ):
        raise InvalidRequest(
            f"'{name}' must be an object of at most {MAX_METADATA_KEYS} string values "
            f"(keys up to 64, values up to {MAX_METADATA_CHARS} characters).",
            field=name,
        )
    return value


def stream_options(name: str, value: Any) -> dict[str, bool]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{name}' must be an object.", field=name)
    for key in value:
        if key != "include_usage":
            raise InvalidRequest(
                f"'{name}.{key}' is not supported; only include_usage is.", field=f"{name}.{key}"
            )
    if value.get("include_usage") is not None:
        boolean(f"{name}.include_usage", value["include_usage"])
    return {"include_usage": bool(value.get("include_usage"))}


def anything(name: str, value: Any) -> Any:
    """Checked elsewhere (messages, prompt, input, structured outputs, tools): kept as sent."""
    return value


def length_penalty(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not -10 <= value <= 10:
        raise InvalidRequest(f"'{name}' must be a number between -10 and 10.", field=name)
    return float(value)


def _sampling(name: str) -> Check:
    return FIELD_CHECKS[name]


NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
STRING = {"type": "string"}
TEXT_PART = {
    "type": "object",
    "properties": {"type": {"type": "string", "enum": ["text"]}, "text": STRING},
    "required": ["type", "text"],
}
STOP = {
    "oneOf": [
        {**STRING, "minLength": 1, "maxLength": MAX_STOP_CHARS},
        {
            "type": "array",
            "items": {**STRING, "minLength": 1, "maxLength": MAX_STOP_CHARS},
            "maxItems": MAX_STOPS,
        },
    ]
}

# Printable (no control characters) and not only spaces: str.isprintable, as far as a pattern can say it.
MODEL_PATTERN = "^(?! *$)[^\\x00-\\x1f\\x7f-\\x9f]*$"
MODEL = Field(
    model_name,
    {**STRING, "minLength": 1, "maxLength": MAX_MODEL_NAME, "pattern": MODEL_PATTERN},
    "A served model or alias.",
    True,
)
USER = Field(
    text(MAX_USER_CHARS), {**STRING, "maxLength": MAX_USER_CHARS}, "The end user, for the caller's records."
)
METADATA = Field(
    metadata,
    {"type": "object", "additionalProperties": STRING, "maxProperties": MAX_METADATA_KEYS},
    "String pairs for the caller's records; not shown to the model.",
)

# Sampling fields, common to chat and text completions (vLLM's extras included).
SAMPLING: dict[str, Field] = {
    "max_tokens": Field(
        _sampling("max_tokens"),
        {**INTEGER, "minimum": 1, "maximum": MAX_INT},
        "Most new tokens; default: what fits the context.",
    ),
    "max_completion_tokens": Field(
        _sampling("max_tokens"),
        {**INTEGER, "minimum": 1, "maximum": MAX_INT},
        "OpenAI's newer name of max_tokens; wins over it.",
    ),
    "temperature": Field(
        _sampling("temperature"), {**NUMBER, "minimum": 0, "maximum": 2}, "0 (or below 1e-5) is greedy."
    ),
    "top_p": Field(
        _sampling("top_p"),
        {**NUMBER, "minimum": 0, "exclusiveMinimum": True, "maximum": 1},
        "Nucleus sampling mass.",
    ),
    "top_k": Field(
        _sampling("top_k"),
        {**INTEGER, "minimum": -1, "maximum": MAX_INT},
        "Keep the k most likely tokens; 0 or -1: off.",
    ),
    "min_p": Field(
        _sampling("min_p"), {**NUMBER, "minimum": 0, "maximum": 1}, "Drop tokens below min_p x top."
    ),
    "stop": Field(_sampling("stop"), STOP, f"A string or up to {MAX_STOPS} strings that end the answer."),
    "stop_token_ids": Field(
        _sampling("stop_token_ids"),
        {"type": "array", "items": {**INTEGER, "minimum": 0, "maximum": MAX_INT}, "maxItems": 256},
        "Token ids that end the answer.",
    ),
    "seed": Field(
        _sampling("seed"),
        {**INTEGER, "minimum": 0, "maximum": MAX_SEED - 1},
        "Makes sampling reproducible; choice i of n uses seed + i.",
    ),
    "repetition_penalty": Field(
        _sampling("repetition_penalty"),
        {**NUMBER, "minimum": 0.01, "maximum": 10},
        "vLLM's repetition penalty.",
    ),
    "presence_penalty": Field(
        _sampling("presence_penalty"), {**NUMBER, "minimum": -2, "maximum": 2}, "OpenAI's."
    ),
    "frequency_penalty": Field(
        _sampling("frequency_penalty"), {**NUMBER, "minimum": -2, "maximum": 2}, "OpenAI's."
    ),
    "ignore_eos": Field(_sampling("ignore_eos"), BOOLEAN, "Generate past the end-of-sequence token."),
}

GENERATION: dict[str, Field] = {
    "model": MODEL,
    **SAMPLING,
    "n": Field(integer(1, MAX_N), {**INTEGER, "minimum": 1, "maximum": MAX_N}, "Choices to return."),
    "best_of": Field(
        integer(1, MAX_N),
        {**INTEGER, "minimum": 1, "maximum": MAX_N},
        "Candidates to generate; the n with the highest cumulative logprob are returned. Not with stream.",
    ),
    "use_beam_search": Field(
        boolean, BOOLEAN, "Beam search of width best_of (or n); returns the n best beams."
    ),
    "length_penalty": Field(
        length_penalty,
        {**NUMBER, "minimum": -10, "maximum": 10},
        "Beam search: the score is the cumulative logprob divided by length ** length_penalty.",
    ),
    "early_stopping": Field(boolean, BOOLEAN, "Beam search: stop when best_of finished beams exist."),
    "stream": Field(boolean, BOOLEAN, "Answer with server-sent events."),
    "stream_options": Field(
        stream_options,
        {"type": "object", "properties": {"include_usage": BOOLEAN}, "additionalProperties": False},
        "include_usage: a last chunk with the usage.",
    ),
    "user": USER,
    "metadata": METADATA,
}
