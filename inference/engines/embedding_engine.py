"""The embedding engine: a sentence-transformers model, run off the event loop.

`SentenceTransformer` reads the folder's `modules.json` and pools exactly as
the model was trained (mean, CLS, ...); vectors are L2-normalised so a dot
product is a cosine similarity. Encoding runs in a worker thread, and a lock
keeps one encode at a time: each call is already a batch, and two batches
fighting over two cores would only slow both.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
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
)
from inference.errors import InvalidRequest, ModelLoadError, WrongTask

BATCH_SIZE = 32


class EmbeddingEngine(Engine):
    """Serve a sentence-transformers model for /v1/embeddings."""

    def __init__(self, config: EngineConfig, *, folder: Path, default_name: str) -> None:
        from sentence_transformers import SentenceTransformer

        from inference.engines.transformers_engine import configure_threads, pick_device

        configure_threads(config)
        device = pick_device(config.device)
        try:
            self.model = SentenceTransformer(str(folder), device=device)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Could not load {folder}: {exc}".splitlines()[0]) from exc
        limit = int(self.model.max_seq_length or 512)
        if config.max_model_len:
            limit = min(limit, config.max_model_len)
        self.info = ModelInfo(
            task="embed",
            backend="sentence-transformers",
            device=device,
            max_model_len=limit,
            default_name=default_name,
            has_chat_template=False,
        )
        self.admission = Admission(config.max_concurrency, config.max_queue, config.queue_timeout)
        self._lock = threading.Lock()
        self._recent: deque[tuple[float, int]] = deque()

    def tokenize(self, text: str) -> list[int]:
        return list(self.model.tokenizer.encode(text, add_special_tokens=False))

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        raise WrongTask("This model serves embeddings; it does not chat.", field="model")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        raise WrongTask("This model serves embeddings; it does not generate text.", field="model")
        yield  # pragma: no cover - makes this an async generator like the others

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        """Embed `texts` in one batched, normalised encode; refuse texts over the model's limit."""
        if not texts:
            raise InvalidRequest("'input' must not be empty.", field="input")
        counts = [len(self.model.tokenizer.encode(text)) for text in texts]
        longest = max(counts)
        if longest > self.info.max_model_len:  # refuse rather than silently embed a truncated text
            raise InvalidRequest(
                f"An input has {longest} tokens; this model embeds at most {self.info.max_model_len}.",
                field="input",
            )
        async with self.admission.slot():
            vectors = await asyncio.to_thread(self._encode, texts)
        self._recent.append((time.monotonic(), sum(counts)))
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(counts))

    def _encode(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            # sentence-transformers draws a progress bar per call when logging is at INFO: never in a worker.
            array = self.model.encode(
                texts,
                batch_size=BATCH_SIZE,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return [[float(x) for x in row] for row in array]

    async def abort(self, request_id: str) -> bool:
        return False  # an encode is one short batch; there is nothing to stop midway

    def stats(self) -> EngineStats:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - 10.0:
            self._recent.popleft()
        return EngineStats(
            in_flight=self.admission.running,
            queued=self.admission.waiting,
            tokens_per_second=sum(n for _, n in self._recent) / 10.0,
        )
