"""Failover between workers: a worker's error answers, the queue's wait, and the next worker to try."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2
from django.conf import settings

from portal.gateway import queue
from portal.gateway.client import fault_name, timed_out
from portal.gateway.errors import (
    GatewayError,
    credentials_refused,
    no_worker,
    worker_failed,
    worker_timeout,
)
from portal.gateway.ticket import Ticket
from portal.metrics import instruments
from registry.models import WorkerKind
from registry.services.dispatch import (
    NoWorkerAvailable,
    ResolvedModel,
    WorkerSnapshot,
    aget_candidates,
    choose_worker,
    with_prefill_workers,
)
from registry.services.prefix_index import PrefixIndex, route

if TYPE_CHECKING:
    from portal.gateway.gateway import Gateway

logger = logging.getLogger(__name__)

COLD_POLL_SECONDS = 0.25  # how often the head of a model's queue looks for a worker that is coming
CREDENTIALS_LOG_SECONDS = 60.0  # a worker refusing the token is logged at most this often
LOGGED_WORKERS_CAP = 10_000
FAILOVER_FAULTS = ("busy", "misrouted", "worker", "credentials")  # another worker may serve the request
T = TypeVar("T")


@dataclass
class PrefixLookup:
    """A cache-aware request's prompt text against its model's index, and what it matched last."""

    index: PrefixIndex
    text: str
    matches: dict[int, int] = field(default_factory=dict)

    def match(self) -> dict[int, int]:
        self.matches = self.index.matches(self.text)
        return self.matches


class WorkerDied(Exception):
    """The worker broke before its first answer: another worker may take the request."""


def _error_fields(content: bytes) -> tuple[str, str, Any, Any]:
    try:
        detail = json.loads(content)["error"]
        message, error_type = str(detail["message"]), str(detail.get("type") or "server_error")
        param, code = detail.get("param"), detail.get("code")
    except (ValueError, KeyError, TypeError):
        return content[:300].decode(errors="replace"), "server_error", None, None
    return message[:2000], error_type, param if isinstance(param, str) else None, code


def error_from_response(status: int, content: bytes) -> GatewayError:
    """The worker's answer as the client's error, with the `fault` failover goes by.

    4xx: the request is at fault, passed through (a 404 excepted: the worker
    does not serve the model, registry and worker disagree; a 401 or 403 too:
    the worker refused the portal's token, not the client's key). 503: busy. Other
    5xx: the worker's own failure (502), unless its body blames the request
    (type invalid_request_error), which makes it a 400.
    """
    if status in (401, 403):
        return credentials_refused()
    message, error_type, param, code = _error_fields(content)
    if status == 404:
        error = worker_failed(f"the worker does not serve this model ({message})")
        error.fault = "misrouted"
    elif status == 503:
        error = GatewayError(
            message, status_code=503, error_type=error_type, param=param, code=code, retry_after=2
        )
        error.fault = "busy"
    elif status >= 500 and error_type != "invalid_request_error":
        error = worker_failed(message or f"HTTP {status}")
        error.fault = "worker"
    else:
        retry_after = 2 if status == 429 else None
        error = GatewayError(
            message,
            status_code=status if status < 500 else 400,
            error_type=error_type,
            param=param,
            code=code,
            retry_after=retry_after,
        )
        error.fault = "client"
    return error


async def pick_worker(
    gateway: Gateway,
    model: ResolvedModel,
    place: queue.Place,
    skip: set[int],
    busy: set[int],
    last_error: GatewayError | None,
    prefixes: PrefixLookup | None = None,
) -> Any:
    """The next worker to try for `model`, waiting in the queue while every one is busy.

    `skip`: workers that failed this request; `busy`: those that refused it as
    busy since it last waited. A new request queues behind this portal's queued
    ones rather than take a slot before them. A model with no online worker
    waits too when workers are coming (`Demand.workers_coming`: a cold start,
    or workers re-registering). `prefixes`: the model's prefix index and this
    prompt's text, under the cache-aware policy: matched just before the choice
    (requests arriving together see each other's), and the workers chosen are
    recorded as holding it. Raise GatewayError when no
    worker is left, or when the queue's time is up.
    """
    while True:
        candidates = await aget_candidates(served_model_id=model.id)
        if prefixes is not None:
            prefixes.index.follow(c.id for c in candidates)
        coming = None if candidates or last_error else await gateway.demand.workers_coming(model)
        if coming is not None and not place.queued:
            place.timeout = coming
        others_waiting = place.enabled and not place.queued and gateway.queues.waiting_here(model.id) > 0
        if not others_waiting:
            usable = gateway.counters.with_local_counts(candidates, skip | busy)
            try:
                matches = prefixes.match() if prefixes is not None else None
                chosen = choose_worker(
                    usable, model.dispatch_policy, allow_full=place.queued, matches=matches
                )
                paired = with_prefill_workers(chosen, usable, matches)
                if prefixes is not None:
                    prefill = [c.id for c in usable if c.address in paired.prefill_from[:1]]
                    prefixes.index.record(prefixes.text, paired.id, *prefill)
                return paired
            except NoWorkerAvailable as exc:
                if coming is None and not (place.enabled and candidates and (exc.all_full or busy)):
                    raise _none_left(model, candidates, exc, last_error) from None
        gateway.demand.waiting(model.name, place.member)
        await _wait_turn(model, place, cold=coming is not None)
        busy.clear()


async def _wait_turn(model: ResolvedModel, place: queue.Place, *, cold: bool) -> None:
    """The queue's wait; for workers that are coming, a pause at its head and a cold start's 503."""
    try:
        await place.wait_turn()
    except GatewayError as exc:
        if not cold or exc.status_code != 503:
            raise
        raise no_worker(
            f"No worker of '{model.name}' came online within {place.timeout:g} s; retry later.",
            retry_after=queue.QUEUE_TIMEOUT_RETRY_AFTER,
        ) from None
    if cold:
        await asyncio.sleep(COLD_POLL_SECONDS)


def _none_left(
    model: ResolvedModel, candidates: list[Any], exc: NoWorkerAvailable, last_error: GatewayError | None
) -> GatewayError:
    """Why no worker can take the request: the last worker's own error, or the fleet's state."""
    if last_error is not None:
        return last_error
    if not candidates:
        return no_worker(f"No online worker serves the model '{model.name}'; retry later.")
    return no_worker(str(exc))


@dataclass
class _Tries:
    """What one request's failover has learnt so far: whom to skip, and the last worker's error."""

    gateway: Gateway = field(repr=False)
    failed: set[int] = field(default_factory=set)  # failed this request: not asked again
    busy: set[int] = field(default_factory=set)  # refused it as busy since it last waited
    # Answered a 5xx: excluded if another worker serves the request.
    suspects: list[WorkerSnapshot] = field(default_factory=list)
    last_error: GatewayError | None = None
    left: tuple[str, str] | None = None  # (identity, reason) of the worker that just failed
    failures: int = 0  # attempts that count against GATEWAY_MAX_ATTEMPTS

    def refused(self, worker: Any, error: GatewayError) -> None:
        """Take note of a worker's error answer; raise it when it ends the request."""
        fault = error.fault
        if fault not in FAILOVER_FAULTS or (fault == "worker" and self.suspects):
            raise error
        if fault == "busy":
            self.busy.add(worker.id)
        else:
            self.failed.add(worker.id)
            # A worker refusing the token says nothing of the request: it costs no attempt.
            self.failures += fault != "credentials"
        if fault in ("misrouted", "credentials"):
            self.gateway.counters.exclude(worker)
        elif fault == "worker":
            self.suspects.append(worker)
        if fault == "credentials":
            _count_credentials_refused(self.gateway, worker)
        self.last_error, self.left = error, (worker.identity, fault)

    def broke(self, worker: Any, exc: Exception) -> None:
        """Take note of a worker gone, or whose connection broke: exclude it for a while.

        A stale keep-alive socket to a killed worker reads as ReadError.
        """
        self.gateway.counters.exclude(worker)
        self.failed.add(worker.id)
        self.failures += 1
        self.last_error = worker_failed(f"{worker.identity} failed before answering ({fault_name(exc)}).")
        self.left = (worker.identity, "connection")

    def served(self) -> None:
        for suspect in self.suspects:  # another worker served what it failed: the fault was its own
            self.gateway.counters.exclude(suspect)


def _count_credentials_refused(gateway: Gateway, worker: Any) -> None:
    """Count a worker's 401/403 in /metrics; warn about it at most once a minute per worker.

    What a half-done token rotation looks like: the worker holds another
    WORKER_TOKEN (or the remote endpoint another key). The token is never logged.
    """
    instruments.record_worker_auth_failure(worker=worker.identity)
    logged = gateway.credential_warnings
    now = time.monotonic()
    last = logged.get(worker.identity)
    if last is not None and now - last < CREDENTIALS_LOG_SECONDS:
        return
    if len(logged) >= LOGGED_WORKERS_CAP:
        logged.clear()
    logged[worker.identity] = now
    secret = "its remote_api_key" if worker.kind == WorkerKind.REMOTE else "the portal's WORKER_TOKEN"
    logger.warning(
        "Worker %s at %s refused %s (401/403); it is left out of dispatch for a while. "
        "Give it the portal's token (or keep the old one in WORKER_TOKEN_FALLBACKS while rotating).",
        worker.identity,
        worker.address,
        secret,
    )


async def with_failover(model: ResolvedModel, ticket: Ticket, attempt: Callable[[Any], Awaitable[T]]) -> T:
    """Run `attempt(worker)` on one worker after another until one answers.

    Failover happens on worker faults only: a refused or broken connection
    (that worker is excluded for a while), a busy worker (503, not excluded),
    one that does not serve the model (excluded), one that refuses the
    portal's token (401/403: excluded, counted and logged; it costs no
    attempt), or a worker's own 5xx. A 4xx is the request's fault and ends it,
    on the first worker. A worker's 5xx counts against it only once another
    worker served the same request; when a second worker fails it as well, the
    request is taken to be the cause: it ends there and no worker is excluded.
    A timeout once the request was sent ends it too (the worker may still be
    generating: the Ticket aborts it). When every worker is busy the request
    waits in the model's queue (`queue`) up to its `queue_timeout`; busy
    answers do not count against its attempts. A move to another worker is
    counted (portal_dispatch_failovers) against the one left.
    """
    gateway = ticket.gateway
    place = queue.Place(
        gateway.queues,
        model_id=model.id,
        model_name=model.name,
        timeout=model.queue_timeout,
        member=ticket.entry.request_id,
        terms=ticket.queue,
    )
    tries = _Tries(gateway=gateway)
    key = ticket.prompt_key
    prefixes = PrefixLookup(gateway.prefix_index(model.id), key) if key else None
    gateway.demand.arrived(model.name)
    try:
        while True:
            worker = await pick_worker(
                gateway, model, place, tries.failed, tries.busy, tries.last_error, prefixes
            )
            if prefixes is not None:
                ticket.entry.route = route(worker.id, worker.identity, prefixes.matches)
            gateway.demand.stopped_waiting(model.name, place.member)
            await place.leave()  # the next in line may go while this one tries its worker
            if tries.left is not None and tries.left[0] != worker.identity:
                instruments.record_failover(model=model.name, worker=tries.left[0], reason=tries.left[1])
            ticket.assign(worker)
            try:
                result = await attempt(worker)
            except GatewayError as exc:
                tries.refused(worker, exc)
            except (httpx2.HTTPError, WorkerDied) as exc:
                if timed_out(exc):
                    ticket.abort_on_finish = True
                    raise worker_timeout(timeout_seconds()) from None
                tries.broke(worker, exc)
            else:
                tries.served()
                return result
            if tries.last_error is not None and tries.failures >= max(1, settings.GATEWAY_MAX_ATTEMPTS):
                raise tries.last_error
    finally:
        gateway.demand.finished(model.name, place.member)
        await place.close()


def timeout_seconds() -> float:
    return float(settings.GATEWAY_READ_TIMEOUT)
