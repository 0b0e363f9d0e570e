"""The opt-in request log of one request: its body as sent, and the answer's text as it goes out.

Built only for a caller whose team or key keeps a request log (`Caller.log_days`);
everyone else's request carries `None` and pays one attribute test per event.
The draft rides on the request's usage entry, through the same buffer (memory
or the Redis stream) and the same batched write, so the response never waits
for it. What is kept: the request's JSON (headers are never seen here, so no
Authorization header or key; fields named like a secret are blanked) and the
answer's text (a stream's assembled from its chunks; tool calls as their JSON;
an embedding's vectors are not kept, only how many there were).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

# Enough for a long conversation; a longer body is cut (and says so) rather than filling the database.
MAX_CHARS = 200_000
CUT = "\n[… cut at {} characters]"
_SECRET_NAME = re.compile(r"^(api_?key|authorization|secret|password|access_token|token)$", re.IGNORECASE)


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + CUT.format(MAX_CHARS)


def without_secrets(body: dict[str, Any]) -> dict[str, Any]:
    """The body with any top-level field named like a credential blanked (a client that put its key there)."""
    return {name: "[not kept]" if _SECRET_NAME.match(name) else value for name, value in body.items()}


@dataclass
class LogDraft:
    """What one request's log will hold; `entry_field()` is what its usage entry carries to the writer."""

    days: int
    request: str
    parts: dict[int, list[str]] = field(default_factory=dict)  # choice index → its text, in pieces

    @classmethod
    def of(cls, body: dict[str, Any], days: int) -> LogDraft:
        return cls(days=days, request=_bounded(json.dumps(without_secrets(body), ensure_ascii=False)))

    def add_chunk(self, payload: str) -> None:
        """Add a streamed event's text (chat delta or completion text) to its choice's answer."""
        try:
            chunk = json.loads(payload)
        except ValueError:
            return
        for choice in chunk.get("choices") or () if isinstance(chunk, dict) else ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            self._add(choice.get("index", 0), delta if isinstance(delta, dict) else choice)

    def take_answer(self, result: dict[str, Any]) -> None:
        """Take a whole (not streamed) answer: each choice's text, or an embedding's count of vectors."""
        if result.get("object") == "list" and isinstance(result.get("data"), list):
            self.parts = {0: [f"[{len(result['data'])} embedding vector(s), not kept]"]}
            return
        for choice in result.get("choices") or ():
            if isinstance(choice, dict):
                message = choice.get("message")
                self._add(choice.get("index", 0), message if isinstance(message, dict) else choice)

    def note_error(self, message: str) -> None:
        self.parts.setdefault(-1, []).append(f"[error: {message}]")

    def _add(self, index: Any, piece: dict[str, Any]) -> None:
        text = piece.get("content") if "content" in piece else piece.get("text")
        pieces = self.parts.setdefault(index if isinstance(index, int) else 0, [])
        if isinstance(text, str):
            pieces.append(text)
        if piece.get("tool_calls"):
            pieces.append(json.dumps(piece["tool_calls"], ensure_ascii=False))

    @property
    def response(self) -> str:
        answers = ["".join(self.parts[index]) for index in sorted(self.parts)]
        return _bounded("\n\n".join(answers))

    def entry_field(self) -> dict[str, Any]:
        """Plain JSON for the usage entry (it may cross Redis): days, request, response."""
        return {"days": self.days, "request": self.request, "response": self.response}
