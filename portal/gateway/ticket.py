"""A request's ticket: its worker, timings and usage, its usage record and the settling of its limits."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from portal.gateway.errors import GatewayError
from portal.gateway.figures import cached_count, usage_counts
from portal.gateway.limits import Reservation
from portal.gateway.queue import QueueTerms
from portal.gateway.request_log import LogDraft
from portal.gateway.tasks import spawn
from portal.gateway.worker_calls import abort_request
from portal.metrics import instruments
from registry.models import UsageStatus, WorkerKind
from registry.services.usage import UsageEntry

if TYPE_CHECKING:
    from portal.gateway.gateway import Gateway


@dataclass
class Ticket:
    """One request's bookkeeping, from dispatch to its one usage record.

    `finish` runs once whatever ends the request. A request stopped early
    (the client left, or the worker timed out) is aborted on our worker, whose
    answer carries the tokens used so far; the record is written, and the
    caller's reservation settled, with those. Without figures from the worker
    (a remote endpoint, a worker gone) the tokens are estimated: the prompt's
    estimate plus one token per content chunk relayed.
    """

    gateway: Gateway
    entry: UsageEntry
    reservation: Reservation | None = None
    queue: QueueTerms = field(default_factory=QueueTerms)  # how it waits when every worker is busy
    started: float = field(default_factory=time.perf_counter)
    worker: Any = None
    finished: bool = False
    abort_on_finish: bool = False
    prompt_estimate: int = 0
    chunks: int = 0  # content chunks relayed to the client
    usage_known: bool = False
    streamed: bool = False  # its first token came as the first event of a stream
    choices: int = 1  # completions generated side by side (n), for the time between tokens
    worker_label: str = ""  # the identity of the last worker assigned, for the metrics
    prompt_key: str = ""  # what the prompt starts with, for the cache-aware policy ("" under others)
    role_label: str = "both"  # its role: "decode" when it continues from a prefill worker
    log: LogDraft | None = field(default=None, repr=False)  # the opt-in request log's bodies
    _in_flight: Any = field(default=None, repr=False)  # its in-flight gauge while a worker holds it
    # The task adding its record to the shared buffer (Redis); None when it stays in memory.
    _recording: asyncio.Task[None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.entry.streamed = self.streamed
        self.hold(self.reservation)

    def hold(self, reservation: Reservation | None) -> None:
        """Settle `reservation` when the request ends (it is this ticket's to settle now)."""
        self.reservation = reservation
        if reservation is not None:
            reservation.claimed = True
            self.prompt_estimate = reservation.estimate.prompt

    def assign(self, worker: Any) -> None:
        """Count the request against `worker` until it ends or moves to another worker."""
        self.release()
        self.worker = worker
        self.entry.worker_id = worker.id
        self.worker_label = worker.identity
        self.role_label = "decode" if getattr(worker, "prefill_from", ()) else "both"
        self.gateway.counters.acquire(worker.id)
        self._in_flight = instruments.start_in_flight(self.model_label, worker.identity)

    def release(self) -> None:
        if self.worker is not None:
            self.gateway.counters.release(self.worker.id)
            self._in_flight.dec()
            self.worker = None
            self.gateway.queues.wake()  # a slot may have freed: the heads of the queues try again

    @property
    def model_label(self) -> str:
        """The served model's name once the request's name resolved, else "" (never a client's name)."""
        return self.entry.model_name if self.entry.served_model_id is not None else ""

    def first_token(self) -> None:
        if self.entry.time_to_first_token_ms is None:
            self.entry.time_to_first_token_ms = (time.perf_counter() - self.started) * 1000

    def set_usage(self, usage: Any) -> None:
        """Take the worker's usage figures, coerced to non-negative ints (anything else counts 0)."""
        counts = usage_counts(usage)
        if counts is not None:
            self.entry.prompt_tokens, self.entry.completion_tokens = counts
            self.entry.cached_tokens = cached_count(usage)
            self.usage_known = True

    def finish(self, status: str = UsageStatus.OK, error: GatewayError | None = None) -> None:
        """Release the worker and write the usage record once, whatever path ends the request."""
        if self.finished:
            return
        self.finished = True
        worker = self.worker
        self.release()
        self.entry.status = status
        self.entry.total_time_ms = (time.perf_counter() - self.started) * 1000
        if status == UsageStatus.CANCELLED:
            self.entry.status_code = 499
        if error is not None:
            self.entry.status_code, self.entry.error = error.status_code, error.message
            if self.log is not None:
                self.log.note_error(error.message)
        stopped = status == UsageStatus.CANCELLED or self.abort_on_finish
        if stopped and worker is not None and worker.kind != WorkerKind.REMOTE:
            spawn(self._abort_then_record(worker))
        else:
            self._record()

    async def recorded(self) -> None:
        """Wait until the usage record is in a buffer that outlives this process (Redis); at once otherwise.

        A finished response awaits this before its last bytes, so that a client
        that saw the answer end has its usage counted even if the portal dies.
        """
        if self._recording is not None:
            await self._recording

    async def _abort_then_record(self, worker: Any) -> None:
        try:
            usage = await abort_request(self.gateway, worker, self.entry.request_id)
            if not self.usage_known:
                self.set_usage(usage)
        finally:
            self._record()

    def _record(self) -> None:
        if not self.usage_known:
            self._estimate_usage()
        if self.log is not None:
            self.entry.log = self.log.entry_field()
        self._recording = self.gateway.usage.schedule(self.entry)
        if self.reservation is not None:
            self.reservation.settle(self.entry.prompt_tokens, self.entry.completion_tokens)
        self._observe()

    def _observe(self) -> None:
        entry = self.entry
        ttft = None if entry.time_to_first_token_ms is None else entry.time_to_first_token_ms / 1000
        latency = (entry.total_time_ms or 0.0) / 1000
        ok = entry.status == UsageStatus.OK
        instruments.record_request(
            model=self.model_label,
            worker=self.worker_label,
            status=entry.status_code,
            prompt_tokens=entry.prompt_tokens,
            completion_tokens=entry.completion_tokens,
            ttft=ttft,
            latency=latency if ok else None,
            token_gap=self._token_gap(ttft, latency) if ok else None,
            role=self.role_label,
        )

    def _token_gap(self, ttft: float | None, latency: float) -> float | None:
        """The mean time between a streamed answer's tokens: decoding time ÷ gaps, per choice."""
        tokens = self.entry.completion_tokens / max(1, self.choices)
        if not self.streamed or ttft is None or tokens < 2:
            return None
        return max(0.0, latency - ttft) / (tokens - 1)

    def _estimate_usage(self) -> None:
        # A worker that took the request read its prompt; one that failed before any content did
        # no work we can count.
        if self.entry.worker_id is None or (self.entry.status == UsageStatus.ERROR and not self.chunks):
            return
        self.entry.prompt_tokens = self.prompt_estimate
        self.entry.completion_tokens = self.chunks
