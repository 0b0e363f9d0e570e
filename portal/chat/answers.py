"""The outcome of one generation, as the consumer reports it and the database keeps it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Answer:
    """Text and figures of one streamed answer; partial when stopped or failed."""

    model_name: str
    content: str = ""
    answer_format: str = "text"  # AnswerFormat: text or json
    status: str = "complete"  # AnswerStatus: complete, stopped or error
    worker_identity: str = ""
    request_id: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    time_to_first_token_ms: float | None = None
    tokens_per_second: float | None = None
    error: str = ""
    error_code: str = ""
    retryable: bool = False

    def figures(self) -> dict[str, Any]:
        """Return the numbers shown under the answer (JSON-ready)."""
        data = asdict(self)
        data.pop("content")
        data.pop("answer_format")
        return data
