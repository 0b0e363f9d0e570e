"""Talking to one worker: its URLs, headers, error bodies, the abort call and the request's ticket."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx2
from django.conf import settings

from portal.gateway import counters
from portal.gateway.client import get_client
from portal.gateway.errors import GatewayError, no_worker, worker_failed, worker_timeout
from registry.models import UsageStatus, WorkerKind
from registry.services.dispatch import NoWorkerAvailable, ResolvedModel, aget_candidates, choose_worker
from registry.services.usage import UsageEntry, schedule_usage

logger = logging.getLogger(__name__)

# Timeouts before the request left this portal: the worker never saw it, another may take it.
NEVER_SENT = (httpx2.ConnectTimeout, httpx2.PoolTimeout)
_background: set[asyncio.Task[None]] = set()
T = TypeVar("T")


class WorkerDied(Exception):
    """The worker broke before its first answer: another worker may take the request."""


def worker_url(worker: Any, endpoint: str) -> str:
    """Our workers serve `/v1/...`; a remote endpoint is registered with its `/v1` base already."""
    base = worker.address.rstrip("/")
    return f"{base}/{endpoint}" if worker.kind == WorkerKind.REMOTE else f"{base}/v1/{endpoint}"


def worker_headers(worker: Any, request_id: str) -> dict[str, str]:
    headers = {"X-Request-Id": request_id}
    if worker.kind == WorkerKind.REMOTE and worker.remote_api_key:
        headers["Authorization"] = f"Bearer {worker.remote_api_key}"
    return headers


def error_from_response(status: int, content: bytes) -> GatewayError:
    """The worker's OpenAI-shaped error, kept for 4xx and 503; any other 5xx becomes 502."""
    try:
        detail = json.loads(content)["error"]
        message, error_type = str(detail["message"]), str(detail.get("type") or "server_error")
        param, code = detail.get("param"), detail.get("code")
    except (ValueError, KeyError, TypeError):
        message, error_type, param, code = content[:300].decode(errors="replace"), "server_error", None, None
    if status == 404:
        # The worker does not know the name: registry and worker disagree; not the client's typo.
        return worker_failed(f"the worker does not serve this model ({message})")
    if status >= 500 and status != 503:
        return worker_failed(message or f"HTTP {status}")
    retry_after = 2 if status in (429, 503) else None
    return GatewayError(
        message, status_code=status, error_type=error_type, param=param, code=code, retry_after=retry_after
    )


def is_retryable(status: int) -> bool:
    """Statuses after which another worker may succeed: busy or broken, not a bad request."""
    return status == 429 or status >= 500


def spawn(coro: Any) -> None:
    """Run `coro` in the background, holding a reference until it ends."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _abort(address: str, request_id: str) -> None:
    try:
        await get_client().post(f"{address.rstrip('/')}/abort/{request_id}", timeout=2.0)
    except httpx2.HTTPError as exc:
        logger.info("abort of request %s on %s failed: %s", request_id, address, exc)


def abort_on_worker(worker: Any, request_id: str) -> None:
    """Tell our worker to stop the request (remote endpoints stop when the connection closes)."""
    if worker.kind != WorkerKind.REMOTE:
        spawn(_abort(worker.address, request_id))


async def pick_worker(model: ResolvedModel, tried: set[int], last_error: GatewayError | None) -> Any:
    """The next worker to try for `model`, skipping those tried; raise GatewayError when none is left."""
    candidates = await aget_candidates(served_model_id=model.id)
    try:
        return choose_worker(counters.with_local_counts(candidates, tried), model.dispatch_policy)
    except NoWorkerAvailable as exc:
        if last_error is not None:
            raise last_error from None
        if not candidates:
            raise no_worker(f"No online worker serves the model '{model.name}'; retry later.") from None
        raise no_worker(str(exc)) from None


async def with_failover(model: ResolvedModel, ticket: Ticket, attempt: Callable[[Any], Awaitable[T]]) -> T:
    """Run `attempt(worker)` on one worker after another until one answers.

    A worker that refuses, dies before answering or answers a retryable status
    is left for the next (at most GATEWAY_MAX_ATTEMPTS tries); a broken one is
    excluded for a while, a merely busy one (503) is not. A timeout once the
    request was sent ends it: the worker may still be generating, so it is told
    to abort.
    """
    tried: set[int] = set()
    last_error: GatewayError | None = None
    for _ in range(max(1, settings.GATEWAY_MAX_ATTEMPTS)):
        worker = await pick_worker(model, tried, last_error)
        tried.add(worker.id)
        ticket.assign(worker)
        try:
            return await attempt(worker)
        except GatewayError as exc:
            if not is_retryable(exc.status_code):
                raise
            if exc.status_code != 503:
                counters.exclude(worker.id)
            last_error = exc
        except (httpx2.HTTPError, WorkerDied) as exc:
            if isinstance(exc, httpx2.TimeoutException) and not isinstance(exc, NEVER_SENT):
                # The worker may still be generating: stop it; the client gets a 504.
                abort_on_worker(worker, ticket.entry.request_id)
                raise worker_timeout(timeout_seconds()) from None
            # Gone, or its connection broke (a stale keep-alive socket to a killed worker reads
            # as ReadError): exclude it for a while and try another.
            counters.exclude(worker.id)
            last_error = worker_failed(f"{worker.identity} failed before answering ({type(exc).__name__}).")
    assert last_error is not None
    raise last_error


@dataclass
class Ticket:
    """One request's bookkeeping: timings, worker, in-flight count and, at the end, its usage record."""

    entry: UsageEntry
    started: float = field(default_factory=time.perf_counter)
    worker: Any = None
    finished: bool = False

    def assign(self, worker: Any) -> None:
        """Count the request against `worker` until it ends or moves to another worker."""
        self.release()
        self.worker = worker
        self.entry.worker_id = worker.id
        counters.acquire(worker.id)

    def release(self) -> None:
        if self.worker is not None:
            counters.release(self.worker.id)
            self.worker = None

    def first_token(self) -> None:
        if self.entry.time_to_first_token_ms is None:
            self.entry.time_to_first_token_ms = (time.perf_counter() - self.started) * 1000

    def set_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self.entry.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.entry.completion_tokens = int(usage.get("completion_tokens") or 0)

    def finish(self, status: str = UsageStatus.OK, error: GatewayError | None = None) -> None:
        """Release the worker and write the usage record once, whatever path ends the request."""
        if self.finished:
            return
        self.finished = True
        if status == UsageStatus.CANCELLED and self.worker is not None:
            abort_on_worker(self.worker, self.entry.request_id)
        self.release()
        self.entry.status = status
        self.entry.total_time_ms = (time.perf_counter() - self.started) * 1000
        if status == UsageStatus.CANCELLED:
            self.entry.status_code = 499
        if error is not None:
            self.entry.status_code, self.entry.error = error.status_code, error.message
        schedule_usage(entry=self.entry)


def timeout_seconds() -> float:
    return float(settings.GATEWAY_READ_TIMEOUT)
