"""Sampling parameters: parsed from an OpenAI-style body, validated field by field."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from inference.errors import InvalidRequest

DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. `temperature == 0` means greedy; `top_k == 0` means off."""

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
        for key in _FIELD_NAMES:
            if body.get(key) is not None:
                merged[key] = body[key]
        if body.get("max_completion_tokens") is not None and body.get("max_tokens") is None:
            merged["max_tokens"] = body["max_completion_tokens"]
        values = {name: _PARSERS[name](name, merged[name]) for name in _FIELD_NAMES if name in merged}
        return cls(**values)


def _integer(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{name}' must be an integer, got {type(value).__name__}.", field=name)
    if minimum is not None and value < minimum:
        raise InvalidRequest(f"'{name}' must be at least {minimum}, got {value}.", field=name)
    return value


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"'{name}' must be a number, got {value!r}.", field=name)
    if not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be between {low} and {high}, got {value}.", field=name)
    return float(value)


def _positive(name: str, value: float) -> float:
    if value <= 0:
        raise InvalidRequest(f"'{name}' must be greater than 0.", field=name)
    return value


def _stop(name: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise InvalidRequest(f"'{name}' must be a string or a list of strings.", field=name)
    if len(items) > 16:
        raise InvalidRequest(f"'{name}' allows at most 16 sequences.", field=name)
    if any(s == "" for s in items):
        raise InvalidRequest(f"'{name}' sequences must not be empty.", field=name)
    return tuple(items)


def _token_ids(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value
    ):
        raise InvalidRequest(f"'{name}' must be a list of non-negative integers.", field=name)
    return tuple(value)


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean.", field=name)
    return value


_PARSERS: dict[str, Any] = {
    "max_tokens": lambda n, v: _integer(n, v, minimum=1),
    "temperature": lambda n, v: _number(n, v, 0.0, 2.0),
    "top_p": lambda n, v: _positive(n, _number(n, v, 0.0, 1.0)),
    "top_k": lambda n, v: 0 if v == -1 else _integer(n, v, minimum=0),
    "min_p": lambda n, v: _number(n, v, 0.0, 1.0),
    "stop": _stop,
    "stop_token_ids": _token_ids,
    "seed": lambda n, v: _integer(n, v),
    "repetition_penalty": lambda n, v: _number(n, v, 0.01, 10.0),
    "presence_penalty": lambda n, v: _number(n, v, -2.0, 2.0),
    "frequency_penalty": lambda n, v: _number(n, v, -2.0, 2.0),
    "ignore_eos": _boolean,
}
_FIELD_NAMES = [f.name for f in fields(SamplingParams)]
assert set(_PARSERS) == set(_FIELD_NAMES)
