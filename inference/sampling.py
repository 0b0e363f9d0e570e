"""Sampling parameters: parsed from an OpenAI-style body, validated field by field."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from inference.errors import InvalidRequest

DEFAULT_MAX_TOKENS = 256
# Below this a temperature is greedy, as in vLLM: dividing logits by 1e-40 overflows to inf.
GREEDY_BELOW = 1e-5
MAX_SEED = 2**63  # exclusive: what a torch generator and vLLM take without overflow
MAX_INT = 2**63 - 1  # every integer field fits a signed 64-bit integer
MAX_STOPS = 16
MAX_STOP_CHARS = 256  # matching cost grows with the square of a stop string's length
MAX_STOP_TOKEN_IDS = 256


GUIDE_KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")


@dataclass(frozen=True)
class Guide:
    """A constraint on the form of the output, compiled by the engine into per-token masks.

    `spec` is the JSON schema (as JSON text) for "json_schema", empty for
    "json_object", the regular expression for "regex", a JSON list of strings
    for "choice" and a Lark (or GBNF-style) grammar for "grammar". `field` is
    the request field that asked for it, named when the engine refuses it.
    """

    kind: str
    spec: str
    field: str = "response_format"


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. `temperature == 0` means greedy; `top_k == 0` means off.

    A temperature below 1e-5 is stored as 0 (greedy); a seed is in [0, 2**63).
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False
    # Set by the request parser, not read from the body's sampling fields:
    guide: Guide | None = None  # structured output
    logprobs: int | None = None  # None: none; k: the chosen token's logprob and the k most likely

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_request(cls, body: dict[str, Any], defaults: dict[str, Any] | None = None) -> SamplingParams:
        """Build from an OpenAI request body; raise InvalidRequest naming the bad field.

        `defaults` (a served model's defaults) fill fields the body leaves out.
        `max_completion_tokens` is accepted as the newer name of `max_tokens`.
        """
        merged: dict[str, Any] = dict(defaults or {})
        for key in FIELD_NAMES:
            if body.get(key) is not None:
                merged[key] = body[key]
        if body.get("max_completion_tokens") is not None and body.get("max_tokens") is None:
            merged["max_tokens"] = body["max_completion_tokens"]
        values = {name: FIELD_CHECKS[name](name, merged[name]) for name in FIELD_NAMES if name in merged}
        return cls(**values)


def _integer(name: str, value: Any, minimum: int | None = None, maximum: int = MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{name}' must be an integer, got {type(value).__name__}.", field=name)
    if minimum is not None and value < minimum:
        raise InvalidRequest(f"'{name}' must be at least {minimum}, got {value}.", field=name)
    if value > maximum:
        raise InvalidRequest(f"'{name}' must be at most {maximum}.", field=name)
    return value


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        raise InvalidRequest(f"'{name}' must be a number, got {value!r}.", field=name)
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low} and {high}, got {value}.", field=name)
    return float(value)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond any float
        return False


def _temperature(name: str, value: Any) -> float:
    temperature = _number(name, value, 0.0, 2.0)
    return 0.0 if temperature < GREEDY_BELOW else temperature


def _positive(name: str, value: float) -> float:
    if value <= 0:
        raise InvalidRequest(f"'{name}' must be greater than 0.", field=name)
    return value


def _stop(name: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list) and len(items) > MAX_STOPS:
        raise InvalidRequest(f"'{name}' allows at most {MAX_STOPS} sequences.", field=name)
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise InvalidRequest(f"'{name}' must be a string or a list of strings.", field=name)
    if any(s == "" for s in items):
        raise InvalidRequest(f"'{name}' sequences must not be empty.", field=name)
    if any(len(s) > MAX_STOP_CHARS for s in items):
        raise InvalidRequest(f"'{name}' sequences must be at most {MAX_STOP_CHARS} characters.", field=name)
    return tuple(items)


def _token_ids(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, list) and len(value) > MAX_STOP_TOKEN_IDS:
        raise InvalidRequest(f"'{name}' allows at most {MAX_STOP_TOKEN_IDS} ids.", field=name)
    if not isinstance(value, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= MAX_INT for t in value
    ):
        raise InvalidRequest(f"'{name}' must be a list of non-negative integers.", field=name)
    return tuple(value)


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean.", field=name)
    return value


# The value check of each body field, by name: the request parser (inference.protocol) uses them too.
FIELD_CHECKS: dict[str, Any] = {
    "max_tokens": lambda n, v: _integer(n, v, minimum=1),
    "temperature": _temperature,
    "top_p": lambda n, v: _positive(n, _number(n, v, 0.0, 1.0)),
    "top_k": lambda n, v: 0 if v == -1 else _integer(n, v, minimum=0),
    "min_p": lambda n, v: _number(n, v, 0.0, 1.0),
    "stop": _stop,
    "stop_token_ids": _token_ids,
    "seed": lambda n, v: _integer(n, v, minimum=0, maximum=MAX_SEED - 1),
    "repetition_penalty": lambda n, v: _number(n, v, 0.01, 10.0),
    "presence_penalty": lambda n, v: _number(n, v, -2.0, 2.0),
    "frequency_penalty": lambda n, v: _number(n, v, -2.0, 2.0),
    "ignore_eos": _boolean,
}
FIELD_NAMES = [f.name for f in fields(SamplingParams) if f.name not in ("guide", "logprobs")]
assert set(FIELD_CHECKS) == set(FIELD_NAMES)
