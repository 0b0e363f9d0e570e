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

import json
import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping

BLOCK_CHARS = 64  # about 16 tokens of English, the engines' block
ROUTE_CHARS = 200  # UsageRecord.route: a long worker identity must not overflow it
MAX_BLOCKS = 100_000  # per model: ~6 MB of text prefixes' keys


def prompt_text(
    messages: list[dict] | None, tools: tuple[dict, ...] | None, prompts: tuple[str | tuple[int, ...], ...]
) -> str:
    """What a request's prompt starts with, as text in its order: the tools, then each message or prompt.

    A conversation's next turn appends messages, so its text extends the last turn's.
    """
    parts = [json.dumps(tools, sort_keys=True)] if tools else []
    for message in messages or ():
        content = message.get("content")
        parts.append(f"{message.get('role')}\n{content if isinstance(content, str) else json.dumps(content)}")
    # A batch of completion prompts (a scoring harness's) is keyed by its first.
    parts.extend(p if isinstance(p, str) else ",".join(map(str, p)) for p in prompts[:1])
    return "\x1e".join(parts)


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
        self._live: frozenset[int] = frozenset()

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

    def record(self, text: str, *workers: int) -> None:
        """`workers` were sent `text`: they now likely hold every block of it."""
        keys = _keys(text)
        for key in keys:
            self._blocks.setdefault(key, set()).update(workers)
        for key in reversed(keys):  # a prefix's first blocks stay the newest: the deepest go first
            self._blocks.move_to_end(key)
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)

    def follow(self, workers: Iterable[int]) -> None:
        """The model's online workers now: forget those that left (their caches are gone or going)."""
        live = frozenset(workers)
        if not self._live <= live:
            self.keep_only(live)
        self._live = live

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
    loads: list[int], ids: list[int], matches: Mapping[int, int], slack: int, rng: random.Random
) -> int:
    """The worker (by index) for a prompt: the longest match within `slack` of the least load."""
    least = min(loads)
    best = max(range(len(ids)), key=lambda i: (matches.get(ids[i], 0), -loads[i]))
    if matches.get(ids[best], 0) and loads[best] <= least + slack:
        return best
    return rng.choice([i for i, load in enumerate(loads) if load == least])


def route(worker_id: int, identity: str, matches: Mapping[int, int]) -> str:
    """Why `choose` sent a request to this worker, for its usage record."""
    if matched := matches.get(worker_id, 0):
        reason = f"prefix of {matched} chars on {identity}"
    else:
        held = max(matches.values(), default=0)
        reason = f"least loaded ({f'the {held}-char match was busier' if held else 'no prefix match'})"
    return reason[:ROUTE_CHARS]
