"""Prefills kept for a moment, so a prompt scored alone is not run through the model twice.

`echo` with `logprobs` scores the prompt in one forward pass of its own
(TransformersEngine.prompt_logprobs); the generation the worker starts next
for the same prompt joins the batch from that pass's cache and last logits,
as a hand-off from a prefill worker does, instead of prefilling again:
lm-evaluation-harness's requests cost one pass instead of two. Entries are
taken once, first in first out within a token budget (one context's worth),
so those nobody takes (`max_tokens: 0`, a client gone) hold bounded memory.
Used from the batch thread only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Prefill:
    """One prompt's cache rows (a DynamicCache of one row) and the logits of the token after it."""

    cache: Any
    last_logits: torch.Tensor  # (vocab,), float32 on the CPU


class KeptPrefills:
    """Prefills by prompt, at most `budget` prompt tokens in all; the oldest go first."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._kept: OrderedDict[tuple[int, ...], Prefill] = OrderedDict()
        self._tokens = 0

    def keep(self, prompt: list[int], prefill: Prefill) -> None:
        key = tuple(prompt)
        if len(key) > self.budget:
            return
        self.take(prompt)
        while self._kept and self._tokens + len(key) > self.budget:
            oldest, _ = self._kept.popitem(last=False)
            self._tokens -= len(oldest)
        self._kept[key] = prefill
        self._tokens += len(key)

    def take(self, prompt: list[int]) -> Prefill | None:
        """The prefill of exactly this prompt, removed (its cache joins a batch and changes), or None."""
        prefill = self._kept.pop(tuple(prompt), None)
        if prefill is not None:
            self._tokens -= len(prompt)
        return prefill
