"""The portal's Prometheus instruments, and the few calls the gateway makes on them.

Every metric object of the portal is declared here, so that names, labels and
buckets are read in one place. They are written on the request path by plain
`prometheus_client` calls (a lock and an add, no thread hop, no database).

Several portal processes on one host give one view through
prometheus-client's multiprocess mode: with PROMETHEUS_MULTIPROC_DIR set each
process writes its values to memory-mapped files there and `/metrics` (in any
of them) merges the files. Each host is its own scrape target; Prometheus sums
across hosts. Without it the values live in this process's default registry.

Labels stay bounded: `model` is a served model's canonical name, known to the
registry, or "" when the request named none that resolved (a client's name
never becomes a label); `worker` is a worker's identity, "" when no worker was
picked; `status` is the HTTP status answered.
"""

from __future__ import annotations

import atexit
import functools
import os
from pathlib import Path
from typing import NamedTuple

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, multiprocess, values

from portal.metrics.outcomes import outcome

# Time to first token: from a few ms (a warm small model) to tens of seconds (a long prompt, a queue).
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
# Mean gap between tokens: ~1 ms (a GPU, small batch) to a second (a CPU under a large batch).
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
# A whole request: from an embedding (tens of ms) to a long generation (minutes).
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


def _check_mode() -> None:
    """Refuse a multiprocess setting that prometheus-client saw otherwise (it reads it once, at import)."""
    directory = settings.PROMETHEUS_MULTIPROC_DIR
    if bool(directory) == (values.ValueClass is not values.MutexValue):
        if directory:
            Path(directory).mkdir(parents=True, exist_ok=True)
            # Gauges of a process that exited must not count on; its counters do.
            atexit.register(lambda: multiprocess.mark_process_dead(os.getpid(), directory))
        return
    raise ImproperlyConfigured(
        "prometheus_client and PROMETHEUS_MULTIPROC_DIR disagree: set it to a directory in the "
        "environment of the portal processes before they start, or unset it (an empty value still "
        "turns on prometheus-client's multiprocess mode)."
    )


_check_mode()
disable_created_metrics()  # a `_created` series per counter and histogram says nothing a scraper uses

REQUESTS = Counter(
    "portal_requests",
    "Requests the gateway answered (dispatched, failed or refused by a limit), by HTTP status.",
    ["model", "worker", "status"],
)
OUTCOMES = Counter(
    "portal_request_outcomes",
    "Requests by outcome: ok; server_error (5xx: a worker's fault, no worker, a timeout), the only "
    "one an error rate should count; client_error (4xx); limited (429); cancelled (499).",
    ["model", "outcome"],
)
PROMPT_TOKENS = Counter("portal_prompt_tokens", "Prompt tokens of finished requests.", ["model", "worker"])
COMPLETION_TOKENS = Counter(
    "portal_completion_tokens", "Completion tokens of finished requests.", ["model", "worker"]
)
# `role` is the serving worker's: "both" prefills and decodes itself, "decode" continued from a
# prefill worker's hand-off, so the two show what the split does to the first token and the rest.
TIME_TO_FIRST_TOKEN = Histogram(
    "portal_time_to_first_token_seconds",
    "Time from dispatch to the first streamed event (to the whole answer when not streamed).",
    ["model", "worker", "role"],
    buckets=TTFT_BUCKETS,
)
INTER_TOKEN_LATENCY = Histogram(
    "portal_inter_token_latency_seconds",
    "Mean gap between a streamed request's completion tokens, one observation per request.",
    ["model", "worker", "role"],
    buckets=ITL_BUCKETS,
)
REQUEST_LATENCY = Histogram(
    "portal_request_duration_seconds",
    "Time from dispatch to the end of requests answered successfully.",
    ["model", "worker"],
    buckets=LATENCY_BUCKETS,
)
IN_FLIGHT = Gauge(
    "portal_requests_in_flight",
    "Requests dispatched to a worker and not yet finished.",
    ["model", "worker"],
    multiprocess_mode="livesum",
)
FAILOVERS = Counter(
    "portal_dispatch_failovers",
    "Requests moved to another worker after `worker` failed or refused them, by `reason`.",
    ["model", "worker", "reason"],
)
WORKER_AUTH_FAILURES = Counter(
    "portal_worker_auth_failures",
    "Answers 401 or 403 from `worker` to the portal: it holds another WORKER_TOKEN (or key).",
    ["worker"],
)
QUEUED = Gauge(
    "portal_queued_requests",
    "Requests of this portal waiting in the shared queue because every worker of the model was busy.",
    ["model"],
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "portal_queue_wait_seconds",
    "Time requests waited in the shared queue, whether they got a worker or timed out.",
    ["model"],
    buckets=TTFT_BUCKETS,
)
REFUSALS = Counter(
    "portal_rate_limit_refusals",
    "Requests refused by a caller's limit, by door (api, signed, chat) and limit (rpm, tpm, ...).",
    ["door", "model", "reason"],
)
LIMITS_FALLBACK = Counter(
    "portal_limits_fallback",
    "Requests whose limits this process counted itself, at its share, because Redis failed, by door.",
    ["door"],
)
LIMITS_REDIS_DOWN = Gauge(
    "portal_limits_redis_down",
    "1 while this process counts limits itself because Redis failed, 0 while Redis counts them.",
    multiprocess_mode="livemax",
)

# Quota subjects start with the door's prefix (portal.api.throttling, signed.guard, chat.streaming).
_DOORS = (("key:", "api"), ("app:", "signed"), ("chat-", "chat"))


def door_of(subject: str) -> str:
    """The door a quota subject belongs to, from a fixed list (never the subject itself)."""
    for prefix, door in _DOORS:
        if subject.startswith(prefix):
            return door
    return "other"


class _Series(NamedTuple):
    """One (model, worker)'s children, looked up once: `labels()` costs more than the update itself."""

    in_flight: Gauge
    prompt_tokens: Counter
    completion_tokens: Counter
    latency: Histogram


@functools.lru_cache(maxsize=4096)  # labels are bounded: served models x workers
def _series(model: str, worker: str) -> _Series:
    return _Series(
        IN_FLIGHT.labels(model, worker),
        PROMPT_TOKENS.labels(model, worker),
        COMPLETION_TOKENS.labels(model, worker),
        REQUEST_LATENCY.labels(model, worker),
    )


@functools.lru_cache(maxsize=4096)
def _timings(model: str, worker: str, role: str) -> tuple[Histogram, Histogram]:
    return TIME_TO_FIRST_TOKEN.labels(model, worker, role), INTER_TOKEN_LATENCY.labels(model, worker, role)


@functools.lru_cache(maxsize=4096)
def _requests(model: str, worker: str, status: int) -> Counter:
    return REQUESTS.labels(model, worker, str(status))


def start_in_flight(model: str, worker: str) -> Gauge:
    """Count one request in flight on `worker`; call `.dec()` on the returned child when it ends."""
    gauge = _series(model, worker).in_flight
    gauge.inc()
    return gauge


def record_request(
    *,
    model: str,
    worker: str,
    status: int,
    prompt_tokens: int,
    completion_tokens: int,
    ttft: float | None,
    latency: float | None,
    token_gap: float | None,
    role: str = "both",
) -> None:
    """Observe one finished request (times in seconds; None: not measured)."""
    _requests(model, worker, status).inc()
    OUTCOMES.labels(model, outcome(status)).inc()
    series = _series(model, worker)
    if prompt_tokens:
        series.prompt_tokens.inc(prompt_tokens)
    if completion_tokens:
        series.completion_tokens.inc(completion_tokens)
    first_token, gaps = _timings(model, worker, role)
    if ttft is not None:
        first_token.observe(ttft)
    if latency is not None:
        series.latency.observe(latency)
    if token_gap is not None:
        gaps.observe(token_gap)


def record_failover(*, model: str, worker: str, reason: str) -> None:
    FAILOVERS.labels(model, worker, reason).inc()


def record_worker_auth_failure(*, worker: str) -> None:
    WORKER_AUTH_FAILURES.labels(worker).inc()


def queued(model: str) -> Gauge:
    """The gauge of requests waiting for `model`: the caller increments it on entry, decrements on exit."""
    return QUEUED.labels(model)


def record_queue_wait(*, model: str, seconds: float) -> None:
    QUEUE_WAIT.labels(model).observe(seconds)


def record_refusal(*, subject: str, model: str, reason: str) -> None:
    """A limit refused a request: count it, and count it among the requests as a 429."""
    REFUSALS.labels(door_of(subject), model, reason).inc()
    _requests(model, "", 429).inc()


def record_limits_fallback(*, subject: str) -> None:
    """A request's limits were counted in this process (Redis failed): count it by door."""
    LIMITS_FALLBACK.labels(door_of(subject)).inc()


def limits_redis_down(down: bool) -> None:
    LIMITS_REDIS_DOWN.set(1 if down else 0)
