"""Output tokens per second over a recent window, as every engine reports it in the heartbeat."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class TokenRate:
    """Counts tokens as they are produced (from any thread) and averages them over `window_s`.

    What left the window is dropped as tokens arrive, not only when the rate is
    read: a worker without a heartbeat never reads it, and its list grew by
    0.5 MiB a minute under load.
    """

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, int]] = deque()

    def add(self, tokens: int) -> None:
        now = self._clock()
        with self._lock:
            self._recent.append((now, tokens))
            self._drop_before(now - self.window_s)

    def per_second(self) -> float:
        now = self._clock()
        with self._lock:
            self._drop_before(now - self.window_s)
            total = sum(n for _, n in self._recent)
        return total / self.window_s

    def _drop_before(self, start: float) -> None:
        while self._recent and self._recent[0][0] < start:
            self._recent.popleft()
