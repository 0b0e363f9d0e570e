"""The continuous-batching decode loop of the transformers engine.

One background thread owns the model and a left-padded batch that shares one
`DynamicCache`. Between two decode steps it admits newcomers (one batched
prefill of all of them, then their cache rows are merged into the running
batch) and drops finished or aborted sequences (their cache rows are removed).
So a request never waits for another to finish, and 16 requests cost about
one forward pass per token instead of 16. Padding is masked and every row
gets its own position ids, so a sequence decodes the same tokens alone or
batched (up to float rounding).

Results leave the thread through each request's `sink`, which the engine
wires to `loop.call_soon_threadsafe(queue.put_nowait, ...)`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from inference.engines.base import Delta, Usage
from inference.engines.logits import TokenPicker, pick_tokens
from inference.engines.stops import TextStream
from inference.errors import EngineError

logger = logging.getLogger(__name__)

Sink = Callable[[Delta | BaseException], None]


@dataclass(eq=False)
class Sequence:
    """One request inside the batch loop."""

    request_id: str
    prompt_ids: list[int]
    picker: TokenPicker
    stream: TextStream
    sink: Sink
    max_new_tokens: int
    produced: int = 0
    last_token: int = -1
    pending_ids: list[int] = field(default_factory=list)
    finish: str | None = None


@dataclass
class Batch:
    """The running sequences, their shared cache and the padding mask (rows aligned)."""

    seqs: list[Sequence]
    cache: Any  # transformers DynamicCache
    mask: torch.Tensor  # (batch, cached length), 1 where a real token is cached


class Batcher:
    """Run the decode loop in a thread; accept, abort and report sequences from any thread."""

    def __init__(self, model: Any, stop_ids: frozenset[int], window_s: float = 10.0) -> None:
        self.model = model
        self.stop_ids = stop_ids  # EOS ids of the model
        self.window_s = window_s
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._inbox: list[Sequence] = []
        self._known: dict[str, Sequence] = {}
        self._aborts: set[str] = set()
        self._recent: deque[tuple[float, int]] = deque()
        self._running = False
        self._thread: threading.Thread | None = None
        self.batch: Batch | None = None

    # -- any thread ---------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Abort everything and end the loop; waits for the thread."""
        with self._wake:
            self._aborts.update(self._known)
            self._running = False
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def submit(self, seq: Sequence) -> None:
        with self._wake:
            if not self._running:
                raise EngineError("The engine is shutting down.")
            self._inbox.append(seq)
            self._known[seq.request_id] = seq
            self._wake.notify()

    def abort(self, request_id: str) -> bool:
        """Mark a request to end at the next step with finish_reason "abort"."""
        with self._wake:
            if request_id not in self._known:
                return False
            self._aborts.add(request_id)
            self._wake.notify()
            return True

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - self.window_s:
                self._recent.popleft()
            total = sum(n for _, n in self._recent)
        return total / self.window_s

    # -- batch thread ---------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while self._running and not self._inbox and not self._aborts and self.batch is None:
                        self._wake.wait()
                    if not self._running and not self._known:
                        return
                    newcomers, self._inbox = self._inbox, []
                    aborts, self._aborts = self._aborts, set()
                try:
                    self._iterate(newcomers, aborts)
                except Exception as exc:  # a model failure must not leave clients waiting
                    logger.exception("Batch step failed; failing %d requests", len(self._known))
                    self._fail_all(newcomers, exc)

    def _iterate(self, newcomers: list[Sequence], aborts: set[str]) -> None:
        for seq in newcomers:
            if seq.request_id in aborts:
                self._finish(seq, "abort")
        newcomers = [s for s in newcomers if s.finish is None]
        if self.batch is not None:
            for seq in self.batch.seqs:
                if seq.request_id in aborts:
                    self._finish(seq, "abort")
            self._drop_finished()
        if newcomers:
            self._admit(newcomers)
            self._drop_finished()
        # Decode after an admission too: a steady stream of arrivals must not stall the batch.
        if self.batch is not None:
            self._decode_step()
        self._drop_finished()

    def _admit(self, newcomers: list[Sequence]) -> None:
        """Prefill the newcomers together, then merge them into the running batch."""
        width = max(len(s.prompt_ids) for s in newcomers)
        ids = torch.zeros(len(newcomers), width, dtype=torch.long)
        mask = torch.zeros(len(newcomers), width, dtype=torch.long)
        for row, seq in enumerate(newcomers):
            ids[row, width - len(seq.prompt_ids) :] = torch.tensor(seq.prompt_ids)
            mask[row, width - len(seq.prompt_ids) :] = 1
        from transformers import DynamicCache

        cache = DynamicCache()
        logits = self._forward(ids, mask, cache)
        fresh = Batch(newcomers, cache, mask)
        self.batch = fresh if self.batch is None else _merge(self.batch, fresh)
        self._emit_tokens(newcomers, logits)

    def _decode_step(self) -> None:
        assert self.batch is not None
        batch = self.batch
        ids = torch.tensor([[s.last_token] for s in batch.seqs], dtype=torch.long)
        batch.mask = torch.cat([batch.mask, torch.ones(len(batch.seqs), 1, dtype=torch.long)], dim=1)
        logits = self._forward(ids, batch.mask, batch.cache)
        self._emit_tokens(batch.seqs, logits)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        """Run the model on the new columns `ids`; `mask` covers cached + new tokens."""
        device = self.model.device
        # Each row's positions count only its real tokens, so left padding does not shift RoPE.
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        out = self.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float().cpu()

    def _emit_tokens(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        tokens = pick_tokens(logits, [s.picker for s in seqs])
        for seq, token in zip(seqs, tokens, strict=True):
            self._accept(seq, token)
        with self._lock:
            self._recent.append((time.monotonic(), len(seqs)))

    def _accept(self, seq: Sequence, token: int) -> None:
        """Account one sampled token: stream its text or finish the sequence."""
        seq.produced += 1
        seq.last_token = token
        seq.picker.record(token)
        params = seq.picker.params
        if token in params.stop_token_ids or (token in self.stop_ids and not params.ignore_eos):
            self._finish(seq, "stop")
            return
        seq.pending_ids.append(token)
        text = seq.stream.push(token)
        if seq.stream.stopped:
            self._finish(seq, "stop", text)
        elif seq.produced >= seq.max_new_tokens:
            self._finish(seq, "length", text)
        elif text:
            seq.sink(Delta(text=text, token_ids=tuple(seq.pending_ids)))
            seq.pending_ids = []

    def _finish(self, seq: Sequence, reason: str, text: str = "") -> None:
        seq.finish = reason
        text += seq.stream.flush() if reason != "abort" else ""
        usage = Usage(prompt_tokens=len(seq.prompt_ids), completion_tokens=seq.produced)
        seq.sink(Delta(text=text, token_ids=tuple(seq.pending_ids), finish_reason=reason, usage=usage))
        seq.pending_ids = []
        with self._lock:
            self._known.pop(seq.request_id, None)

    def _drop_finished(self) -> None:
        batch = self.batch
        if batch is None:
            return
        keep = [i for i, s in enumerate(batch.seqs) if s.finish is None]
        if len(keep) == len(batch.seqs):
            return
        if not keep:
            self.batch = None
            return
        index = torch.tensor(keep, dtype=torch.long)
        batch.seqs = [batch.seqs[i] for i in keep]
        batch.mask = batch.mask.index_select(0, index)
        batch.cache.batch_select_indices(index.to(self.model.device))
        # Columns that are padding in every remaining row are dead weight: cut them.
        lead = int((batch.mask.sum(dim=0) == 0).long().cumprod(dim=0).sum())
        if lead:
            batch.mask = batch.mask[:, lead:]
            for layer in batch.cache.layers:
                layer.keys = layer.keys[:, :, lead:, :]
                layer.values = layer.values[:, :, lead:, :]

    def _fail_all(self, newcomers: list[Sequence], exc: Exception) -> None:
        error = EngineError(f"The model failed: {exc}".splitlines()[0])
        seqs = list(newcomers) + (self.batch.seqs if self.batch else [])
        self.batch = None
        for seq in seqs:
            if seq.finish is None:
                seq.finish = "error"
                seq.sink(error)
        with self._lock:
            for seq in seqs:
                self._known.pop(seq.request_id, None)


def _merge(old: Batch, new: Batch) -> Batch:
    """Stack two batches, left-padding the shorter one's cache and mask to a common length."""
    width = max(old.mask.shape[1], new.mask.shape[1])
    for layer_old, layer_new in zip(old.cache.layers, new.cache.layers, strict=True):
        layer_old.keys = torch.cat([_pad_left(layer_old.keys, width), _pad_left(layer_new.keys, width)])
        layer_old.values = torch.cat([_pad_left(layer_old.values, width), _pad_left(layer_new.values, width)])
    mask = torch.cat([_pad_left(old.mask, width), _pad_left(new.mask, width)])
    return Batch(old.seqs + new.seqs, old.cache, mask)


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the sequence axis (dim 2 of a cache tensor, dim 1 of a mask) on the left."""
    axis = 2 if tensor.dim() == 4 else 1
    missing = width - tensor.shape[axis]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[axis] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=axis)
