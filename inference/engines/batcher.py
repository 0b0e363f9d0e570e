"""The continuous-batching decode loop of the transformers engine.

One background thread owns the model and a left-padded batch that shares one
`DynamicCache`. Between two decode steps it admits newcomers (one batched
prefill of all of them, then their cache rows are merged into the running
batch) and drops finished or aborted sequences (their cache rows are removed).
So a request never waits for another to finish, and 16 requests cost about
one forward pass per token instead of 16. Padding is masked and every row
gets its own position ids, so a sequence decodes the same tokens alone or
batched (up to float rounding).

A failure fails only the sequence that causes it: a batched prefill that
raises is retried one newcomer at a time; a decode step that raises is rolled
back (the cache cropped to its length before the step), each row is retried
alone on a copy of its cache, the rows that still fail are dropped and the
step is redone for the rest; a row whose sampling fails is dropped alone.

A constrained row's grammar masks its logits before sampling and consumes
the token chosen; the row ends with "stop" once the grammar is complete
(EOS is in the mask only while the grammar accepts). A grammar that errs
fails its own row. Logprobs come from the raw logits, for the rows that ask.

Prefill and decode can run on different workers. A `prefill_only` sequence
is prefilled with the others, its first token drawn, and its cache rows leave
through its sink as a `Handoff` instead of joining the batch. A sequence that
arrives with a `handoff` skips the prefill: its rows are merged into the batch
as they are and its first token is accepted as if drawn here, so it decodes
the same tokens as it would have on one worker.

Results leave the thread through each request's `sink`, which the engine
wires to `loop.call_soon_threadsafe(queue.put_nowait, ...)`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from inference.engines import kvcache
from inference.engines.base import Delta, TokenLogprob, Usage
from inference.engines.handoff import Handoff
from inference.engines.logits import TokenPicker, apply_masks, pick_tokens
from inference.engines.prefills import KeptPrefills
from inference.engines.prefix_cache import PrefixCache
from inference.engines.rate import TokenRate
from inference.engines.stops import TextStream
from inference.errors import EngineError, RequestFailed

logger = logging.getLogger(__name__)

Sink = Callable[[Delta | Handoff | BaseException], None]


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
    output_ids: list[int] = field(default_factory=list)  # every token drawn, to keep the answer's prefix
    reused_tokens: int = 0  # prompt tokens taken from the prefix cache
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: str | None = None
    prefill_only: bool = False  # hand the prefilled rows off instead of decoding
    handoff: Handoff | None = None  # prefilled elsewhere: decode from these rows


@dataclass
class Batch:
    """The running sequences, their shared cache and the padding mask (rows aligned)."""

    seqs: list[Sequence]
    cache: Any  # transformers DynamicCache
    mask: torch.Tensor  # (batch, cached length), 1 where a real token is cached


class Batcher:
    """Run the decode loop in a thread; accept, abort and report sequences from any thread."""

    def __init__(
        self, model: Any, stop_ids: frozenset[int], keep_tokens: int = 0, prefix_cache_bytes: int = 0
    ) -> None:
        self.model = model
        self.stop_ids = stop_ids  # EOS ids of the model
        self.kept = KeptPrefills(keep_tokens)  # prompts scored alone, joined without a second prefill
        self.prefixes = PrefixCache(prefix_cache_bytes)  # prompts and answers kept across requests
        self.prompt_tokens = 0  # prompt tokens admitted, and those the prefix cache spared
        self.reused_tokens = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._inbox: list[Sequence] = []
        self._known: dict[str, Sequence] = {}
        self._aborts: set[str] = set()
        self._jobs: list[tuple[Callable[[], Any], Future[Any]]] = []
        self.rate = TokenRate()
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

    def run_alone(self, job: Callable[[], Any]) -> Future[Any]:
        """Run `job` in the batch thread between two steps (the batch waits), e.g. a beam search.

        The model is only ever used from this thread, so a job that needs it
        whole takes its turn here instead of racing the decode loop.
        """
        future: Future[Any] = Future()
        with self._wake:
            if not self._running:
                raise EngineError("The engine is shutting down.")
            self._jobs.append((job, future))
            self._wake.notify()
        return future

    def abort(self, request_id: str) -> bool:
        """Mark a request to end at the next step with finish_reason "abort"."""
        with self._wake:
            if request_id not in self._known:
                return False
            self._aborts.add(request_id)
            self._wake.notify()
            return True

    # -- batch thread ---------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while (
                        self._running
                        and not self._inbox
                        and not self._aborts
                        and not self._jobs
                        and self.batch is None
                    ):
                        self._wake.wait()
                    if not self._running and not self._known:
                        for _, future in self._jobs:
                            future.set_exception(EngineError("The engine is shutting down."))
                        return
                    newcomers, self._inbox = self._inbox, []
                    aborts, self._aborts = self._aborts, set()
                    jobs, self._jobs = self._jobs, []
                for job, future in jobs:
                    try:
                        future.set_result(job())
                    except Exception as exc:  # the job's own failure, reported to its caller
                        future.set_exception(exc)
                try:
                    self._iterate(newcomers, aborts)
                except Exception as exc:  # a fault the steps did not isolate: never wedge the loop
                    logger.exception("Batch step failed; failing %d requests", len(self._known))
                    self._fail_all(newcomers, exc)

    def _iterate(self, newcomers: list[Sequence], aborts: set[str]) -> None:
        for seq in newcomers:
            if seq.request_id in aborts:
                self._finish(seq, "abort")
        newcomers = [s for s in newcomers if s.finish is None]
        for seq in [s for s in newcomers if s.handoff is not None]:
            self._admit_handed(seq)
        newcomers = [s for s in newcomers if s.handoff is None]
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

    # -- admission ------------------------------------------------------------
    def _admit(self, newcomers: list[Sequence]) -> None:
        """Prefill the newcomers together; if that fails, one by one, failing only those that fail.

        A newcomer whose prompt was just scored alone (`kept`) joins from that pass instead; one
        whose prompt starts with a cached prefix runs only the rest of its prompt, alone.
        """
        waiting = []
        for seq in newcomers:
            self.prompt_tokens += len(seq.prompt_ids)
            prefill = self.kept.take(seq.prompt_ids)
            if prefill is not None:
                mask = torch.ones(1, len(seq.prompt_ids), dtype=torch.long)
                self._join(Batch([seq], prefill.cache, mask), prefill.last_logits.unsqueeze(0))
            elif not self._admit_from_prefix(seq):
                waiting.append(seq)
        if not waiting:
            return
        newcomers = waiting
        try:
            fresh, logits = self._prefill(newcomers)
        except Exception as exc:
            if len(newcomers) == 1:
                self._fail(newcomers[0], exc, isolated=self.batch is not None)
                return
            logger.warning("Prefill of %d requests failed (%s); retrying one by one", len(newcomers), exc)
            self._admit_one_by_one(newcomers)
            return
        self._join(fresh, logits)

    def _admit_from_prefix(self, seq: Sequence) -> bool:
        """Join `seq` from its longest cached prefix, running only the rest; False on a miss."""
        reused, layers = self.prefixes.lookup(seq.prompt_ids)
        if not reused:
            return False
        from transformers import DynamicCache

        device = self.model.device
        cache = DynamicCache(ddp_cache_data=[(keys.to(device), values.to(device)) for keys, values in layers])
        mask = torch.ones(1, len(seq.prompt_ids), dtype=torch.long)
        try:
            logits = self._forward(torch.tensor([seq.prompt_ids[reused:]]), mask, cache)
        except Exception as exc:
            self._fail(seq, exc, isolated=self.batch is not None)
            return True
        seq.reused_tokens = reused
        self.reused_tokens += reused
        fresh = Batch([seq], cache, mask)
        self.prefixes.store(seq.prompt_ids, cache, 0)
        self._join(fresh, logits)
        return True

    def _admit_one_by_one(self, newcomers: list[Sequence]) -> None:
        admitted: list[tuple[Batch, torch.Tensor]] = []
        failed: list[tuple[Sequence, Exception]] = []
        for seq in newcomers:
            try:
                admitted.append(self._prefill([seq]))
            except Exception as exc:
                failed.append((seq, exc))
        # The model works for others: the failure is the request's own doing.
        isolated = bool(admitted) or self.batch is not None
        for seq, error in failed:
            self._fail(seq, error, isolated=isolated)
        for fresh, logits in admitted:
            self._join(fresh, logits)

    def _prefill(self, seqs: list[Sequence]) -> tuple[Batch, torch.Tensor]:
        """Run the prompts of `seqs` into a fresh cache (the running batch is not touched)."""
        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq.prompt_ids) :] = torch.tensor(seq.prompt_ids)
            mask[row, width - len(seq.prompt_ids) :] = 1
        from transformers import DynamicCache

        cache = DynamicCache()
        logits = self._forward(ids, mask, cache)
        for row, seq in enumerate(seqs):
            self.prefixes.store(seq.prompt_ids, cache, row)
        return Batch(seqs, cache, mask), logits

    def _join(self, fresh: Batch, logits: torch.Tensor) -> None:
        """Merge prefilled rows into the running batch and emit their first tokens (or hand them off)."""
        handed = [row for row, seq in enumerate(fresh.seqs) if seq.prefill_only]
        if handed:
            self._hand_off(fresh, logits, handed)
            keep = [row for row, seq in enumerate(fresh.seqs) if not seq.prefill_only]
            if not keep:
                return
            index = torch.tensor(keep, dtype=torch.long)
            fresh.cache.batch_select_indices(index.to(self.model.device))
            fresh = Batch([fresh.seqs[row] for row in keep], fresh.cache, fresh.mask.index_select(0, index))
            logits = logits.index_select(0, index)
        self.batch = fresh if self.batch is None else _merge(self.batch, fresh)
        self._emit_tokens(fresh.seqs, logits)

    def _hand_off(self, fresh: Batch, logits: torch.Tensor, rows: list[int]) -> None:
        """Draw the first token of each prefill-only row and send its rows and sampler state away."""
        seqs = [fresh.seqs[row] for row in rows]
        own = logits.index_select(0, torch.tensor(rows, dtype=torch.long))
        tokens = self._pick(seqs, apply_masks(own, self._masks(seqs)))
        for at, (row, seq, token) in enumerate(zip(rows, seqs, tokens, strict=True)):
            if token is None or seq.finish is not None:
                continue
            length = len(seq.prompt_ids)  # the rows are left-padded to the widest prompt
            layers = [
                (
                    layer.keys[row : row + 1, :, -length:].clone(),
                    layer.values[row : row + 1, :, -length:].clone(),
                )
                for layer in fresh.cache.layers
            ]
            logprob = seq.picker.logprob(own[at], token)
            handoff = Handoff(seq.prompt_ids, token, logprob, layers, seq.picker.generator.get_state())
            seq.finish = "prefilled"
            seq.sink(handoff)
            with self._lock:
                self._known.pop(seq.request_id, None)

    def _admit_handed(self, seq: Sequence) -> None:
        """Join a sequence prefilled elsewhere: its rows as they came, its first token as if drawn here."""
        handoff = seq.handoff
        assert handoff is not None
        try:
            from transformers import DynamicCache

            device = self.model.device
            rows = [(keys.to(device), values.to(device)) for keys, values in handoff.layers]
            fresh = Batch(
                [seq], DynamicCache(ddp_cache_data=rows), torch.ones(1, len(seq.prompt_ids), dtype=torch.long)
            )
            seq.picker.generator.set_state(handoff.generator_state)
        except Exception as exc:  # the engine checked the shapes; anything left is this request's
            self._fail(seq, exc, isolated=True)
            return
        self.batch = fresh if self.batch is None else _merge(self.batch, fresh)
        try:
            self._accept(
                seq,
                handoff.first_token,
                handoff.first_logprob if seq.picker.params.logprobs is not None else None,
            )
        except Exception as exc:
            self._fail(seq, exc, isolated=True)

    # -- decoding -------------------------------------------------------------
    def _decode_step(self) -> None:
        """One token for every running row; on a failure, drop the rows that cause it and redo."""
        assert self.batch is not None
        batch = self.batch
        ids = torch.tensor([[s.last_token] for s in batch.seqs], dtype=torch.long)
        mask = torch.cat([batch.mask, torch.ones(len(batch.seqs), 1, dtype=torch.long)], dim=1)
        try:
            logits = self._forward(ids, mask, batch.cache)
        except Exception as exc:
            kvcache.crop(batch.cache, batch.mask.shape[1])
            self._recover_decode(exc)
            return
        batch.mask = mask
        self._emit_tokens(batch.seqs, logits)

    def _recover_decode(self, exc: Exception) -> None:
        """Retry each row alone on a copy of its cache; fail those that fail, redo the step for the rest."""
        assert self.batch is not None
        seqs = self.batch.seqs
        culprits = [(seq, error) for row, seq in enumerate(seqs) if (error := self._probe(row)) is not None]
        if not culprits or len(culprits) == len(seqs):
            # No row fails alone, or every row does: the worker's fault, not a request's.
            logger.error("Decode step failed for the whole batch: %s", exc)
            for seq in seqs:
                self._fail(seq, exc, isolated=False)
            return
        for seq, error in culprits:
            self._fail(seq, error, isolated=True)
        self._drop_finished()
        if self.batch is not None:
            self._decode_step()  # each retry has fewer rows, so this ends

    def _probe(self, row: int) -> Exception | None:
        """Run row `row`'s next step alone on a copy of its cache; return what it raised, if anything."""
        assert self.batch is not None
        seq = self.batch.seqs[row]
        mask = torch.cat([self.batch.mask[row : row + 1], torch.ones(1, 1, dtype=torch.long)], dim=1)
        try:
            self._forward(torch.tensor([[seq.last_token]]), mask, kvcache.copy_row(self.batch.cache, row))
        except Exception as exc:
            return exc
        return None

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

    # -- tokens ---------------------------------------------------------------
    def _emit_tokens(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        tokens = self._pick(seqs, apply_masks(logits, self._masks(seqs)))
        for row, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            if token is None or seq.finish is not None:
                continue
            try:
                self._accept(seq, token, seq.picker.logprob(logits[row], token))
            except Exception as exc:  # grammar, detokenising or stop matching: this row's trouble only
                self._fail(seq, exc, isolated=True)
        self.rate.add(len(seqs))

    def _masks(self, seqs: list[Sequence]) -> list[torch.Tensor | None]:
        """Each constrained row's allowed tokens (None for a free row); a row whose grammar errs fails."""
        masks: list[torch.Tensor | None] = [None] * len(seqs)
        constrained = [(row, g) for row, seq in enumerate(seqs) if (g := seq.picker.grammar) is not None]
        if not constrained:
            return masks
        grammars = [g for _, g in constrained]
        for (row, _), allowed in zip(constrained, grammars[0].compiler.allowed(grammars), strict=True):
            if isinstance(allowed, Exception):
                self._fail(seqs[row], allowed, isolated=True)
            else:
                masks[row] = allowed
        return masks

    def _pick(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int | None]:
        """Sample every row at once; if that fails, row by row (None for a row that failed)."""
        try:
            return list(pick_tokens(logits, [s.picker for s in seqs]))
        except Exception:
            logger.warning("Sampling the batch failed; sampling row by row")
        tokens: list[int | None] = []
        failed: list[tuple[Sequence, Exception]] = []
        for row, seq in enumerate(seqs):
            try:
                tokens.append(seq.picker.pick(logits[row]))
            except Exception as exc:
                tokens.append(None)
                failed.append((seq, exc))
        for seq, error in failed:
            self._fail(seq, error, isolated=len(failed) < len(seqs))
        return tokens

    def _accept(self, seq: Sequence, token: int, logprob: TokenLogprob | None = None) -> None:
        """Account one sampled token: stream its text or finish the sequence."""
        seq.produced += 1
        seq.last_token = token
        seq.output_ids.append(token)
        seq.picker.record(token)
        grammar = seq.picker.grammar
        if grammar is not None:
            grammar.consume(token)
        params = seq.picker.params
        seq.pending_ids.append(token)
        if logprob is not None:
            seq.pending_logprobs.append(logprob)
        if token in params.stop_token_ids or (token in self.stop_ids and not params.ignore_eos):
            # Billed and listed with its logprob, as vLLM does, but it has no text: scorers read it.
            self._finish(seq, "stop")
            return
        text = seq.stream.push(token)
        if seq.stream.stopped or (grammar is not None and grammar.finished):
            self._finish(seq, "stop", text)
        elif seq.produced >= seq.max_new_tokens:
            self._finish(seq, "length", text)
        elif text:
            seq.sink(Delta(text=text, token_ids=tuple(seq.pending_ids), logprobs=self._take_logprobs(seq)))
            seq.pending_ids = []

    @staticmethod
    def _take_logprobs(seq: Sequence) -> tuple[TokenLogprob, ...]:
        logprobs, seq.pending_logprobs = tuple(seq.pending_logprobs), []
        return logprobs

    # -- endings --------------------------------------------------------------
    def _finish(self, seq: Sequence, reason: str, text: str = "") -> None:
        seq.finish = reason
        text += seq.stream.flush() if reason != "abort" else ""
        usage = Usage(
            prompt_tokens=len(seq.prompt_ids), completion_tokens=seq.produced, cached_tokens=seq.reused_tokens
        )
        ids, logprobs = tuple(seq.pending_ids), self._take_logprobs(seq)
        seq.sink(Delta(text=text, token_ids=ids, finish_reason=reason, usage=usage, logprobs=logprobs))
        seq.pending_ids = []
        with self._lock:
            self._known.pop(seq.request_id, None)

    def _fail(self, seq: Sequence, exc: Exception, *, isolated: bool) -> None:
        """End one sequence with an error; `_drop_finished` then frees its row."""
        if seq.finish is not None:
            return
        logger.warning("Request %s failed in the batch: %r", seq.request_id, exc)
        seq.finish = "error"
        seq.sink(blame(exc, isolated=isolated))
        with self._lock:
            self._known.pop(seq.request_id, None)

    def _fail_all(self, newcomers: list[Sequence], exc: Exception) -> None:
        seqs = list(newcomers) + (self.batch.seqs if self.batch else [])
        self.batch = None
        for seq in seqs:
            self._fail(seq, exc, isolated=False)

    def _drop_finished(self) -> None:
        batch = self.batch
        if batch is None:
            return
        keep = [i for i, s in enumerate(batch.seqs) if s.finish is None]
        if len(keep) == len(batch.seqs):
            return
        if not keep:
            self._keep_answers(batch)
            self.batch = None
            return
        self._keep_answers(batch)
        index = torch.tensor(keep, dtype=torch.long)
        batch.seqs = [batch.seqs[i] for i in keep]
        batch.mask = batch.mask.index_select(0, index)
        batch.cache.batch_select_indices(index.to(self.model.device))
        # Columns that are padding in every remaining row are dead weight: cut them.
        lead = int((batch.mask.sum(dim=0) == 0).long().cumprod(dim=0).sum())
        if lead:
            batch.mask = batch.mask[:, lead:]
            kvcache.drop_leading(batch.cache, lead)

    def _keep_answers(self, batch: Batch) -> None:
        """Keep the prompt and answer of each row that ended well: a conversation's next turn starts so."""
        for row, seq in enumerate(batch.seqs):
            if seq.finish not in ("stop", "length"):
                continue
            cached = int(batch.mask[row].sum())  # the last token drawn was never run through the model
            ids = (seq.prompt_ids + seq.output_ids)[:cached]
            if len(ids) == cached:
                self.prefixes.store(ids, batch.cache, row)


def blame(exc: Exception, *, isolated: bool) -> EngineError:
    """The error a client sees: its own request's fault (400) or the worker's (500).

    A failure that only this sequence hits while the model works for others is
    caused by the request (input the checks missed). One that every sequence
    hits, or that is out of memory, is the worker's: a 5xx, so the gateway
    sends the next request elsewhere.
    """
    detail = (str(exc).splitlines() or [type(exc).__name__])[0]
    if isolated and not isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return RequestFailed(f"The model could not process this request: {detail}")
    return EngineError(f"The model failed: {detail}")


def _merge(old: Batch, new: Batch) -> Batch:
    """Stack two batches, left-padding the shorter one's cache and mask to a common length."""
    width = max(old.mask.shape[1], new.mask.shape[1])
    kvcache.merge_caches(old.cache, new.cache, width)
    mask = torch.cat([kvcache.pad_left(old.mask, width), kvcache.pad_left(new.mask, width)])
    return Batch(old.seqs + new.seqs, old.cache, mask)
