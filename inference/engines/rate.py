"""Output tokens per second over a recent window, as every engine reports it in the heartbeat."""

from __future__ import annotations

import threading
import time
from collections import deque


class TokenRate:
    """Counts tokens as they are produced (from any thread) and averages them over `window_s`."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, int]] = deque()

    def add(self, tokens: int) -> None:
        with self._lock:
            self._recent.append((time.monotonic(), tokens))

    def per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - self.window_s:
                self._recent.popleft()
            total = sum(n for _, n in self._recent)
        return total / self.window_s
