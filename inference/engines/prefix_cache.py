"""Prompt prefixes kept across requests: KV blocks keyed by the tokens before them.

vLLM's automatic prefix caching, on the CPU: a prompt is cut into blocks of
`BLOCK_TOKENS` tokens; block i is keyed by a hash of block i-1's key and its
own tokens, so one key names a whole prefix and a lookup walks the prompt
once (O(prompt length)). A block holds every layer's keys and values for its
tokens, as one tensor (layers, 2, heads, BLOCK_TOKENS, head_dim), copied out
of a batch's cache so the batch can change its own freely.

The cache is bounded by bytes and evicted least recently used. A hit touches
its blocks deepest first, so a prefix's first blocks are always newer than its
last ones and go last: eviction never leaves a block whose parent is gone in
use. Keys are checked against the stored tokens, so a hash collision is a miss.

Used from the batch thread only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

BLOCK_TOKENS = 16


@dataclass(frozen=True)
class Block:
    parent: int | None  # the key of the block before it
    tokens: tuple[int, ...]
    kv: torch.Tensor  # (layers, 2, heads, BLOCK_TOKENS, head_dim)


class PrefixCache:
    """KV blocks of recent prompts (and answers), at most `budget_bytes` in all."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._blocks: OrderedDict[int, Block] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def tokens(self) -> int:
        return len(self._blocks) * BLOCK_TOKENS

    def _chain(self, ids: list[int]) -> list[tuple[int, int | None, tuple[int, ...]]]:
        """(key, parent key, tokens) of every whole block of `ids`."""
        chain = []
        parent: int | None = None
        for start in range(0, len(ids) - BLOCK_TOKENS + 1, BLOCK_TOKENS):
            tokens = tuple(ids[start : start + BLOCK_TOKENS])
            key = hash((parent, tokens))
            chain.append((key, parent, tokens))
            parent = key
        return chain

    def lookup(self, prompt_ids: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """The longest cached prefix of the prompt, leaving at least one token to run.

        Returns (tokens reused, per-layer (keys, values) of shape (1, heads, n, head_dim));
        (0, []) on a miss.
        """
        if not self.budget_bytes:
            return 0, []
        found: list[tuple[int, Block]] = []
        for key, parent, tokens in self._chain(prompt_ids[:-1]):
            block = self._blocks.get(key)
            if block is None or block.parent != parent or block.tokens != tokens:
                break
            found.append((key, block))
        if not found:
            return 0, []
        for key, _ in reversed(found):
            self._blocks.move_to_end(key)
        kv = torch.cat([block.kv for _, block in found], dim=3)
        layers = [(kv[layer, 0].unsqueeze(0), kv[layer, 1].unsqueeze(0)) for layer in range(kv.shape[0])]
        return len(found) * BLOCK_TOKENS, layers

    def store(self, ids: list[int], cache: Any, row: int) -> None:
        """Keep the whole blocks of `ids`, whose KV are the last len(ids) columns of `cache`'s row `row`."""
        if not self.budget_bytes:
            return
        chain = self._chain(ids)
        fresh = [(at, link) for at, link in enumerate(chain) if link[0] not in self._blocks]
        if fresh:
            first = len(ids) - fresh[0][0] * BLOCK_TOKENS  # columns from the first new block's start
            rows = torch.stack(
                [
                    torch.stack([layer.keys[row, :, -first:], layer.values[row, :, -first:]])
                    for layer in cache.layers
                ]
            )  # (layers, 2, heads, columns, head_dim)
            base = fresh[0][0]
            for at, (key, parent, tokens) in fresh:
                start = (at - base) * BLOCK_TOKENS
                kv = rows[:, :, :, start : start + BLOCK_TOKENS].clone()
                self._blocks[key] = Block(parent, tokens, kv)
                self.bytes += kv.nbytes
        for key, _, _ in reversed(chain):
            self._blocks.move_to_end(key)
        while self.bytes > self.budget_bytes and self._blocks:
            _, block = self._blocks.popitem(last=False)
            self.bytes -= block.kv.nbytes
