"""Token counts from upstreams, made safe to store, count and show.

A remote endpoint or a rogue worker may send anything as `usage`: a string
with markup, a negative or huge number, NaN. Every figure is coerced here to
a non-negative int that fits a PositiveIntegerField on every database.
"""

from __future__ import annotations

import math
from typing import Any

MAX_COUNT = 2**31 - 1  # PostgreSQL's integer, behind PositiveIntegerField


def count(value: Any) -> int:
    """`value` as a token count: a non-negative int, 0 for anything that is not a finite number."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value):
        number = int(value)
    else:
        return 0
    return min(max(number, 0), MAX_COUNT)


def usage_counts(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens of an OpenAI `usage` object; None when it is not one."""
    if not isinstance(usage, dict):
        return None
    return count(usage.get("prompt_tokens")), count(usage.get("completion_tokens"))


def cached_count(usage: Any) -> int:
    """`prompt_tokens_details.cached_tokens` of an OpenAI `usage` object, at most its prompt tokens."""
    counts = usage_counts(usage)
    details = usage.get("prompt_tokens_details") if counts is not None else None
    if counts is None or not isinstance(details, dict):
        return 0
    return min(count(details.get("cached_tokens")), counts[0])


def clean_usage(usage: Any) -> dict[str, Any] | None:
    """An OpenAI `usage` object with only coerced counts; None when there is none."""
    counts = usage_counts(usage)
    if counts is None:
        return None
    prompt, completion = counts
    clean: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached := cached_count(usage):
        clean["prompt_tokens_details"] = {"cached_tokens": cached}
    return clean
