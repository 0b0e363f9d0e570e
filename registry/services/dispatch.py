"""Dispatch: which worker serves this request.

A pure policy (`choose_worker`) over plain `WorkerSnapshot`s, unit-tested
without a database, plus the thin async service that feeds it live candidates
(`aget_candidates`) and resolves the model a client names (`aresolve_model`).
Both reads are cached in-process for `settings.WORKER_CACHE_SECONDS`: the hot
path reads memory, not the database. Both caches are LRUs with a size cap, and
a malformed model name is answered without a lookup and never cached.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from registry.models import DispatchPolicy, ServedModel, Worker, WorkerKind, WorkerStatus
from registry.services import prefix_index
from registry.services.cache import RefreshingCache

_RNG = random.Random()
MAX_MODEL_NAME_LENGTH = 200  # ServedModel.name and ModelAlias.name
MODEL_CACHE_ENTRIES = 2_000  # names asked for, unknown ones included
CANDIDATE_CACHE_ENTRIES = 1_000  # served models with candidates
PREFIX_SLACK = 2  # requests a worker holding the prefix may carry over the least loaded one


class NoWorkerAvailable(Exception):
    """No candidate can take the request; `all_full` tells "busy" from "none online"."""

    def __init__(self, message: str, *, all_full: bool = False) -> None:
        super().__init__(message)
        self.all_full = all_full


@dataclass(frozen=True)
class WorkerSnapshot:
    """What dispatch knows of a worker: heartbeat figures plus this portal's own count."""

    id: int
    identity: str
    address: str
    kind: str = WorkerKind.LOCAL
    remote_api_key: str = field(default="", repr=False)
    max_concurrency: int = 1
    max_queue: int = 0
    in_flight: int = 0
    queued: int = 0
    tokens_per_second: float = 0.0
    speed: float = 1.0
    local_in_flight: int = 0
    role: str = "both"  # prefill workers only make hand-offs for decode workers
    registered_at: datetime | None = None  # a new value: the worker's process started again
    prefill_from: tuple[str, ...] = ()  # set on a decode worker: the prefill workers it asks, best first

    @property
    def serving_role(self) -> str:
        """The role dispatch goes by: only our own workers split a request; a remote endpoint is "both".

        A decode worker posts the prompt with the worker token to its prefill
        workers, so a prefill worker must be one of ours (its address written
        by its own registration), never an endpoint staff typed in.
        """
        return self.role if self.kind == WorkerKind.LOCAL else "both"

    @property
    def load(self) -> int:
        """Requests on the worker: the heartbeat's figure, or ours when it is fresher and higher."""
        return max(self.in_flight + self.queued, self.local_in_flight)

    @property
    def is_full(self) -> bool:
        """Every slot taken and the queue full. Remote endpoints do not tell us: never full."""
        if self.kind == WorkerKind.REMOTE:
            return False
        return self.load >= self.max_concurrency + self.max_queue


@dataclass(frozen=True)
class ResolvedModel:
    """A served model as the gateway needs it, whatever name (or alias) the client used."""

    id: int
    name: str
    task: str
    dispatch_policy: str
    default_params: dict[str, Any]
    queue_timeout: float = 0.0  # seconds a request may wait for a busy fleet; 0: refused at once
    input_price: float = 0.0  # dollars per million prompt tokens (money budgets)
    output_price: float = 0.0  # dollars per million generated tokens


def _speeds(candidates: list[WorkerSnapshot]) -> list[float]:
    # Measured tokens/s where every candidate has one; otherwise the admin's relative weight,
    # so that an idle worker (0 tokens/s in the recent window) is not starved.
    if all(c.tokens_per_second > 0 for c in candidates):
        return [c.tokens_per_second for c in candidates]
    return [max(c.speed, 1e-6) for c in candidates]


def _lowest(candidates: list[WorkerSnapshot], key: Callable[[int], float], rng: random.Random) -> int:
    scores = [key(i) for i in range(len(candidates))]
    best = min(scores)
    # Ties broken at random so that idle workers share the load instead of the first taking it all.
    return rng.choice([i for i, s in enumerate(scores) if s <= best + 1e-9])


def choose_worker(
    candidates: list[WorkerSnapshot],
    policy: str,
    *,
    rng: random.Random | None = None,
    allow_full: bool = False,
    matches: Mapping[int, int] | None = None,
) -> WorkerSnapshot:
    """Pick the worker for one request by `policy`; raise NoWorkerAvailable, never return None.

    lottery: random, weighted by speed. shortest_queue: lowest (queued + local in-flight) / speed.
    cache_aware: the longest prefix match (`matches`: worker id → characters, from the model's
    `PrefixIndex`) unless it carries PREFIX_SLACK requests more than the least loaded, then the
    least loaded. least_inflight (default): lowest load. Full workers are skipped, unless `allow_full` (the
    head of the request queue asks the least loaded one even so: the figures may be a heartbeat old).
    """
    rng = rng or _RNG
    candidates = [c for c in candidates if c.serving_role != "prefill"]
    if not candidates:
        raise NoWorkerAvailable("No online worker serves this model.")
    open_ = [c for c in candidates if not c.is_full]
    if not open_ and allow_full:
        return candidates[_lowest(candidates, lambda i: candidates[i].load, rng)]
    if not open_:
        raise NoWorkerAvailable(
            f"All {len(candidates)} workers serving this model are busy; retry shortly.", all_full=True
        )
    speeds = _speeds(open_)
    if policy == DispatchPolicy.LOTTERY:
        return rng.choices(open_, weights=speeds, k=1)[0]
    if policy == DispatchPolicy.CACHE_AWARE:
        loads = [c.load for c in open_]
        return open_[prefix_index.choose(loads, [c.id for c in open_], matches or {}, PREFIX_SLACK, rng)]
    if policy == DispatchPolicy.SHORTEST_QUEUE:
        index = _lowest(open_, lambda i: (open_[i].queued + open_[i].local_in_flight) / speeds[i], rng)
        return open_[index]
    return open_[_lowest(open_, lambda i: open_[i].load, rng)]


MAX_PREFILL_CHOICES = 3


def with_prefill_workers(
    worker: WorkerSnapshot, candidates: list[WorkerSnapshot], matches: Mapping[int, int] | None = None
) -> WorkerSnapshot:
    """A decode worker paired with the prefill workers it may ask, least loaded first; others as they are.

    Under cache_aware (`matches`), a prefill worker that was sent the prompt's prefix comes first, the
    longest match first, unless it carries over PREFIX_SLACK requests more than the least loaded.
    Only for the prefill, the decode worker does not need any: without one it prefills itself.
    Both ends are our own workers (`serving_role`): the worker token goes to no remote endpoint.
    """
    if worker.serving_role != "decode":
        return worker
    prefills = sorted(
        (c for c in candidates if c.serving_role == "prefill" and not c.is_full), key=lambda c: c.load
    )
    if matches and prefills:
        least = prefills[0].load
        held = sorted(
            (c for c in prefills if matches.get(c.id) and c.load <= least + PREFIX_SLACK),
            key=lambda c: -matches[c.id],
        )
        prefills = held + [c for c in prefills if c not in held]
    return replace(worker, prefill_from=tuple(c.address for c in prefills[:MAX_PREFILL_CHOICES]))


def list_candidates(*, served_model_id: int) -> list[WorkerSnapshot]:
    """Online, unexpired workers serving the model, as snapshots (one query)."""
    rows = Worker.objects.filter(
        served_models__id=served_model_id, status=WorkerStatus.ONLINE, expires_at__gt=timezone.now()
    ).values(
        "id", "identity", "address", "kind", "remote_api_key", "max_concurrency", "max_queue",
        "in_flight", "queued", "tokens_per_second", "speed", "role", "registered_at",
    )  # fmt: skip
    return [WorkerSnapshot(**row) for row in rows]


async def _load_candidates(served_model_id: Hashable) -> list[WorkerSnapshot]:
    return await database_sync_to_async(list_candidates)(served_model_id=int(served_model_id))  # type: ignore[call-overload]


async def aget_candidates(*, served_model_id: int) -> list[WorkerSnapshot]:
    """Candidates for the model, cached for WORKER_CACHE_SECONDS (refreshed in the background)."""
    return await _candidate_cache.get(served_model_id)


def get_model(*, name: str) -> ResolvedModel | None:
    """The enabled served model called `name` or aliased so; None when there is none."""
    model = ServedModel.objects.filter(
        Q(name=name) | Q(aliases__name=name), enabled=True
    ).first()  # fmt: skip
    if model is None:
        return None
    return ResolvedModel(
        id=model.id,
        name=model.name,
        task=model.task,
        dispatch_policy=model.dispatch_policy,
        default_params=dict(model.default_params or {}),
        queue_timeout=model.queue_timeout,
        input_price=float(model.input_price_per_million),
        output_price=float(model.output_price_per_million),
    )


async def _load_model(name: Hashable) -> ResolvedModel | None:
    return await database_sync_to_async(get_model)(name=str(name))


def valid_model_name(name: object) -> bool:
    """Whether `name` could name a model: a non-empty string of at most 200 printable characters."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_MODEL_NAME_LENGTH
        and name.isprintable()
        and not name.isspace()
    )


async def aresolve_model(*, name: str) -> ResolvedModel | None:
    """`get_model`, cached for WORKER_CACHE_SECONDS (negative answers too); None for a malformed name.

    A malformed name never reaches the database nor the cache: it cannot name a model.
    """
    if not valid_model_name(name):
        return None
    return await _model_cache.get(name)


def _worker_ttl() -> float:
    return float(settings.WORKER_CACHE_SECONDS)


def _worker_max_stale() -> float:
    # A dead worker in a stale list costs one failover; a wait on the database costs every request.
    return 10 * float(settings.WORKER_CACHE_SECONDS)


# An expired empty list is read again first: it would refuse a request (no worker) that a worker
# registered since could serve, e.g. the first request after a database outage.
_candidate_cache: RefreshingCache[list[WorkerSnapshot]] = RefreshingCache(
    _load_candidates,
    ttl=_worker_ttl,
    max_stale=_worker_max_stale,
    max_entries=CANDIDATE_CACHE_ENTRIES,
    reload_first=lambda workers: not workers,
)
_model_cache: RefreshingCache[ResolvedModel | None] = RefreshingCache(
    _load_model, ttl=_worker_ttl, max_stale=_worker_max_stale, max_entries=MODEL_CACHE_ENTRIES
)


def list_online_models(*, on_demand: Collection[str] = ()) -> list[dict[str, Any]]:
    """Served models with at least one online worker, or named in `on_demand` (started on a request)."""
    now = timezone.now()
    online = Q(workers__status=WorkerStatus.ONLINE, workers__expires_at__gt=now)
    models = (
        ServedModel.objects.filter(online | Q(name__in=list(on_demand)), enabled=True)
        .distinct()
        .prefetch_related("aliases")
    )
    return [
        {
            "id": m.id,
            "name": m.name,
            "task": m.task,
            "created": m.created_at,
            "aliases": [a.name for a in m.aliases.all()],
        }
        for m in models
    ]
