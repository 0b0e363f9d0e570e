"""Pick the next token of every sequence in a batch, each with its own sampling parameters.

Each request keeps a `TokenPicker`: its penalties, temperature, top-k/top-p/
min-p and a private `torch.Generator`, so a seeded request draws the same
tokens whatever else shares the batch. A batch of greedy requests without
penalties (the common benchmark case) takes one vectorised argmax.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from inference.sampling import SamplingParams


class TokenPicker:
    """Per-request sampling state: generator and the token counts penalties need."""

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int], vocab_size: int) -> None:
        self.params = params
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()
        self.penalised = (
            params.repetition_penalty != 1.0
            or params.presence_penalty != 0.0
            or params.frequency_penalty != 0.0
        )
        self._counts: torch.Tensor | None = None
        self._seen: torch.Tensor | None = None
        if self.penalised:
            self._counts = torch.zeros(vocab_size)
            self._seen = torch.zeros(vocab_size, dtype=torch.bool)
            ids = torch.tensor([i for i in prompt_ids if i < vocab_size], dtype=torch.long)
            self._seen[ids] = True

    @property
    def simple_greedy(self) -> bool:
        return self.params.greedy and not self.penalised

    def record(self, token_id: int) -> None:
        """Remember an output token for the presence, frequency and repetition penalties."""
        if self._counts is not None and self._seen is not None and token_id < self._counts.numel():
            self._counts[token_id] += 1
            self._seen[token_id] = True

    def pick(self, logits: torch.Tensor) -> int:
        """Choose a token from one row of logits (float32, vocab-sized)."""
        logits = self._penalise(logits.float())
        params = self.params
        if params.greedy:
            return int(logits.argmax())
        logits = logits / params.temperature
        if params.top_k > 0 and params.top_k < logits.numel():
            kth = torch.topk(logits, params.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if params.min_p > 0.0:
            probs = probs.masked_fill(probs < params.min_p * probs.max(), 0.0)
        if params.top_p < 1.0:
            probs = _top_p(probs, params.top_p)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def _penalise(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.penalised or self._counts is None or self._seen is None:
            return logits
        params = self.params
        logits = logits.clone()
        if params.repetition_penalty != 1.0:
            seen = logits[self._seen]
            logits[self._seen] = torch.where(
                seen > 0, seen / params.repetition_penalty, seen * params.repetition_penalty
            )
        if params.frequency_penalty:
            logits -= params.frequency_penalty * self._counts
        if params.presence_penalty:
            logits -= params.presence_penalty * (self._counts > 0).float()
        return logits


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p`."""
    sorted_probs, order = torch.sort(probs, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    # Drop a token when the mass before it already reaches top_p; the top token always stays.
    drop = (cumulative - sorted_probs) >= top_p * cumulative[-1]
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


def pick_tokens(logits: torch.Tensor, pickers: Sequence[TokenPicker]) -> list[int]:
    """Next token for each row of `logits` (batch x vocab), row i by `pickers[i]`."""
    if all(p.simple_greedy for p in pickers):
        return [int(t) for t in logits.argmax(dim=-1).tolist()]
    return [picker.pick(logits[i]) for i, picker in enumerate(pickers)]
