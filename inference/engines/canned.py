"""CannedTokenEngine: a fake engine that streams canned tokens without a model.

For unit tests of gateway logic and for measuring the gateway's own overhead
(benchmarks/gateway_overhead.py): it has no model, answers at a fixed pace and
honours admission, abort, max_tokens and stop strings like a real engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

from inference.engines.admission import Admission
from inference.engines.base import (
    Delta,
    EmbeddingResult,
    Engine,
    EngineConfig,
    EngineStats,
    GenerationRequest,
    ModelInfo,
    Usage,
)
from inference.engines.checks import check_generation
from inference.errors import InvalidRequest

CANNED_WORDS = [
    "The",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "and",
    "runs",
    "far",
    "away",
]


class CannedTokenEngine(Engine):
    """Streams the words of a fixed sentence, one token each, every `token_delay` seconds."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.token_delay = float(config.extra.get("token_delay", 0.0))
        self.info = ModelInfo(
            task=str(config.extra.get("task", "generate")),
            backend="canned",
            device="cpu",
            max_model_len=config.max_model_len or 2048,
            default_name="canned",
        )
        self.admission = Admission(config.max_concurrency, config.max_queue, config.queue_timeout)
        self._aborted: set[str] = set()
        self._known: set[str] = set()  # waiting or running
        self._tokens = 0
        self._started = time.monotonic()

    def tokenize(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        check_generation(request, self.info)
        refuse_unsupported(request)
        self._known.add(request.request_id)
        try:
            async with self.admission.slot():
                async for delta in self._stream(request):
                    yield delta
        finally:
            self._known.discard(request.request_id)
            self._aborted.discard(request.request_id)

    async def _stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        params = request.params
        text = ""
        produced = 0
        finish = "length"
        for i in range(params.max_tokens):
            if request.request_id in self._aborted:
                finish = "abort"
                break
            if self.token_delay:
                await asyncio.sleep(self.token_delay)
            word = CANNED_WORDS[i % len(CANNED_WORDS)]
            piece = word if i == 0 else " " + word
            produced += 1
            self._tokens += 1
            if any(stop in text + piece for stop in params.stop):
                finish = "stop"
                break
            text += piece
            yield Delta(text=piece, token_ids=(i,))
        yield Delta(text="", finish_reason=finish, usage=Usage(len(request.prompt_token_ids), produced))

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        vectors = []
        for text in texts:
            digest = hashlib.sha256(text.encode()).digest()
            vectors.append([b / 255.0 for b in digest[:8]])
        return EmbeddingResult(vectors, sum(len(self.tokenize(t)) for t in texts))

    async def abort(self, request_id: str) -> bool:
        # Like the real engines: only a waiting or running request can be aborted. One refused as
        # busy may come back with the same id, and must not find an old abort waiting for it.
        if request_id not in self._known:
            return False
        self._aborted.add(request_id)
        return True

    def stats(self) -> EngineStats:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        return EngineStats(self.admission.running, self.admission.waiting, self._tokens / elapsed)


def refuse_unsupported(request: GenerationRequest) -> None:
    """Canned words follow no grammar and have no distribution: refuse, naming the field."""
    params = request.params
    if params.guide is not None:
        raise InvalidRequest(
            "The canned engine does not support structured output.", field=params.guide.field
        )
    if params.logprobs is not None:
        raise InvalidRequest("The canned engine does not return logprobs.", field="logprobs")
