"""Pick the next token of every sequence in a batch, each with its own sampling parameters.

Each request keeps a `TokenPicker`: its penalties, temperature, top-k/top-p/
min-p and a private `torch.Generator`, so a seeded request draws the same
tokens whatever else shares the batch. A batch of greedy requests without
penalties (the common benchmark case) takes one vectorised argmax.

A constrained request's picker also holds its `Grammar`: `apply_masks` sets
the tokens its grammar forbids to -inf in its own row (a copy: the raw
logits stay for logprobs), before penalties and sampling, so free rows see
exactly the logits they would see alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from inference.engines.base import TokenLogprob
from inference.sampling import SamplingParams

if TYPE_CHECKING:
    from inference.engines.guided import Grammar


class TokenPicker:
    """Per-request sampling state: generator and the token counts penalties need."""

    def __init__(
        self,
        params: SamplingParams,
        prompt_ids: Sequence[int],
        vocab_size: int,
        grammar: Grammar | None = None,
    ) -> None:
        self.params = params
        self.grammar = grammar
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

    def logprob(self, logits: torch.Tensor, token_id: int) -> TokenLogprob | None:
        """`token_id`'s logprob and the top alternatives in one raw row of logits, if the request asked."""
        k = self.params.logprobs
        if k is None:
            return None
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top = torch.topk(logprobs, min(k, logprobs.numel()))  # sorted, most likely first
        alternatives = tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        return TokenLogprob(token_id, float(logprobs[token_id]), alternatives)

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


def apply_masks(logits: torch.Tensor, allowed: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """`logits` with each row's forbidden tokens at -inf (`allowed[i]` None: row i is free).

    Returns `logits` itself when no row is constrained, else a copy.
    """
    rows = [i for i, mask in enumerate(allowed) if mask is not None]
    if not rows:
        return logits
    width = logits.shape[1]
    masks = torch.stack([_fit(allowed[i], width) for i in rows])  # type: ignore[arg-type]
    if len(rows) == logits.shape[0]:  # every row constrained: no copy to patch
        return torch.where(masks, logits, float("-inf"))
    index = torch.tensor(rows, dtype=torch.long)
    masked = logits.clone()
    masked[index] = torch.where(masks, logits[index], float("-inf"))
    return masked


def _fit(mask: torch.Tensor, width: int) -> torch.Tensor:
    """A mask as wide as the logits: tokens past the tokenizer's vocabulary (model padding) are forbidden."""
    if mask.numel() >= width:
        return mask[:width]
    return torch.cat([mask, torch.zeros(width - mask.numel(), dtype=torch.bool)])


def pick_tokens(logits: torch.Tensor, pickers: Sequence[TokenPicker]) -> list[int]:
    """Next token for each row of `logits` (batch x vocab), row i by `pickers[i]`."""
    if all(p.simple_greedy for p in pickers):
        return [int(t) for t in logits.argmax(dim=-1).tolist()]
    return [picker.pick(logits[i]) for i, picker in enumerate(pickers)]
