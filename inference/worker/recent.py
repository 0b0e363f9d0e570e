"""The final usage of recently finished requests, for an abort that arrives after the end.

The portal aborts a request when its client disconnects, and counts the
tokens the request consumed from the answer. By then the worker may have
closed the generation already (the portal dropped the stream first), so the
usage is kept a little while: at most `size` ids, each for `ttl` seconds.
Every request finished is remembered once, so the running totals here are
the worker's request and token counters (its `/metrics`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from inference.engines.base import Usage


class RecentUsage:
    """A bounded, expiring map of request id -> final Usage (oldest out first)."""

    def __init__(
        self, size: int = 4096, ttl: float = 120.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.size = size
        self.ttl = ttl
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, Usage]] = OrderedDict()
        self.finished = 0  # requests remembered since the worker started
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0  # prompt tokens the engine's prefix cache served

    def remember(self, request_id: str, usage: Usage) -> None:
        self.finished += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cached_tokens += usage.cached_tokens
        self._items.pop(request_id, None)
        self._items[request_id] = (self._clock() + self.ttl, usage)
        self._expire()
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    @property
    def prefix_hit_rate(self) -> float | None:
        """Prompt tokens reused / prompt tokens, over every finished request (None before the first)."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else None

    def get(self, request_id: str) -> Usage | None:
        self._expire()
        item = self._items.get(request_id)
        return item[1] if item else None

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self) -> None:
        now = self._clock()
        while self._items:
            request_id, (deadline, _) = next(iter(self._items.items()))
            if deadline > now:
                return
            del self._items[request_id]
