"""Which worker most likely holds a prompt's prefix: the `cache_aware` dispatch policy.

An approximate radix tree, as SGLang's router keeps, over the prompt's text
rather than its tokens: the portal never tokenises, and a conversation's next
turn (or a shared system prompt) extends the same text. The text is cut into
blocks of `BLOCK_CHARS` characters; block i is keyed by a hash of block i-1's
key and its own characters, so a key names a whole prefix and a lookup walks
the text once (O(prompt length)). Each key remembers the workers that were
sent a prompt through it. Bounded by blocks, least recently used out first;
a worker that leaves the candidates leaves the index.

The choice (`choose`) is SGLang's rule with a bounded load: the worker with
the longest match, unless it carries more than `slack` requests over the
least loaded one, then the least loaded. Workers' engines evict on their
own, so a match is a likelihood, not a promise: a miss costs a prefill.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

BLOCK_CHARS = 64  # about 16 tokens of English, the engines' block
MAX_BLOCKS = 100_000  # per model: ~6 MB of text prefixes' keys
MIN_SLACK = 2  # requests a matched worker may carry over the least loaded one


@dataclass(frozen=True)
class Choice:
    worker_index: int
    reason: str  # why, for the usage record: "prefix 1,216 chars on w1" or "least loaded …"


def _keys(text: str) -> list[int]:
    keys, parent = [], 0
    for start in range(0, len(text) - BLOCK_CHARS + 1, BLOCK_CHARS):
        parent = hash((parent, text[start : start + BLOCK_CHARS]))
        keys.append(parent)
    return keys


class PrefixIndex:
    """Prefix blocks → the workers sent them, for one served model."""

    def __init__(self, max_blocks: int = MAX_BLOCKS) -> None:
        self.max_blocks = max_blocks
        self._blocks: OrderedDict[int, set[int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def matches(self, text: str) -> dict[int, int]:
        """Worker id → characters of `text`'s prefix it was sent (whole blocks), for every worker that was."""
        found: dict[int, int] = {}
        for depth, key in enumerate(_keys(text), start=1):
            workers = self._blocks.get(key)
            if not workers:
                break
            for worker in workers:
                found[worker] = depth * BLOCK_CHARS
        return found

    def record(self, text: str, worker: int) -> None:
        """`worker` was sent `text`: it now likely holds every block of it."""
        keys = _keys(text)
        for key in keys:
            self._blocks.setdefault(key, set()).add(worker)
        for key in reversed(keys):  # a prefix's first blocks stay the newest: the deepest go first
            self._blocks.move_to_end(key)
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)

    def keep_only(self, workers: Iterable[int]) -> None:
        """Forget every worker not in `workers` (gone offline, drained, removed)."""
        live = set(workers)
        for key in list(self._blocks):
            held = self._blocks[key] & live
            if held:
                self._blocks[key] = held
            else:
                del self._blocks[key]


def choose(
    loads: list[int], ids: list[int], matches: dict[int, int], slack: int, rng: random.Random
) -> Choice:
    """The open worker (by index) for a prompt: the longest match within `slack` of the least load."""
    least = min(loads)
    best = max(range(len(ids)), key=lambda i: (matches.get(ids[i], 0), -loads[i]))
    matched = matches.get(ids[best], 0)
    if matched and loads[best] <= least + slack:
        return Choice(best, f"prefix {matched} chars on worker {ids[best]}")
    idle = [i for i, load in enumerate(loads) if load == least]
    index = rng.choice(idle)
    why = "no prefix match" if not matched else f"prefix on worker {ids[best]} but it carries {loads[best]}"
    return Choice(index, f"{why}: least loaded, worker {ids[index]}")
