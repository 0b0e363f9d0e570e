"""Incremental detokenisation and stop strings, per request.

Text is released to the client only when it is final: a token that ends in
the middle of a multi-byte UTF-8 character decodes to U+FFFD and is held
until the next token completes it, and text that could be the beginning of a
stop string is held until it is clear that it is not (a stop string may be
split across several tokens). A stop string itself is never emitted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"


class StopMatcher:
    """Decide how much of a growing text is safe to emit, and where a stop string ends it."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)

    def find_stop(self, text: str, start: int = 0) -> int | None:
        """Index where the earliest stop string ending after `start` begins in `text`, or None."""
        best: int | None = None
        for stop in self.stops:
            # A match may begin before `start` as long as it ends after it.
            index = text.find(stop, max(0, start - len(stop) + 1))
            if index != -1 and (best is None or index < best):
                best = index
        return best

    def safe_length(self, text: str) -> int:
        """How much of `text` can be emitted: all but a tail that may start a stop string."""
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:size]):
                    hold = size
                    break
        return len(text) - hold


class TextStream:
    """Turn a request's generated token ids into text deltas, honouring stop strings."""

    def __init__(self, decode: Callable[[list[int]], str], stops: Sequence[str]) -> None:
        self._decode = decode
        self._matcher = StopMatcher(stops)
        self.token_ids: list[int] = []
        self.text = ""  # everything decoded so far (complete characters only)
        self.emitted = 0  # how many characters of `text` the client has
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add a token; return the newly safe text (maybe ""). Sets `stopped` on a stop string."""
        self.token_ids.append(token_id)
        decoded = self._decode(self.token_ids)
        if decoded.endswith(REPLACEMENT):
            return ""  # an incomplete UTF-8 sequence: wait for the bytes that complete it
        previous = len(self.text)
        self.text = decoded
        stop_at = self._matcher.find_stop(decoded, previous)
        if stop_at is not None:
            self.stopped = True
            self.text = decoded[:stop_at]
            return self._release(len(self.text))
        return self._release(self._matcher.safe_length(decoded))

    def flush(self) -> str:
        """Release whatever is held back; called when the request finishes without a stop string."""
        if self.stopped:
            return ""
        self.text = self._decode(self.token_ids)  # keep even a dangling invalid byte sequence now
        stop_at = self._matcher.find_stop(self.text, self.emitted)
        if stop_at is not None:
            self.stopped = True
            self.text = self.text[:stop_at]
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        piece = self.text[self.emitted : upto]
        self.emitted = upto
        return piece
