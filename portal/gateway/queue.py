"""The shared request queue: a request that finds every worker of its model full waits here for a slot.

Requests wait in order of their caller's priority (higher first), then of
arrival, across every portal: in Redis when REDIS_URL is set (one sorted set
per model, ordered by a Redis counter), in this process otherwise. Only the
request at the head of its model's queue tries a worker, and it tries even
one that the heartbeat figures call full (the worker's own answer is the
truth); a "busy" answer leaves it at the head. It tries again as soon as a
request on this portal ends, and every POLL_SECONDS for slots freed through
another portal. At the model's `queue_timeout` it gets 503 with Retry-After.
A caller (key, app credential, chat user) holds at most `max_queued` places,
so that one key cannot fill the queue. A request whose client leaves while it
waits is cancelled and leaves at once; a portal that dies stops renewing its
places, which expire after PLACE_TTL_MS.

If Redis cannot be reached or does not answer within REDIS_TIMEOUT_SECONDS,
a request queues in this process instead: like the limits, an outage of the
shared store is not an outage of the API.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import redis.asyncio
from django.conf import settings
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from portal.gateway.errors import GatewayError, no_worker
from portal.gateway.per_loop import Loops, redis_client
from portal.metrics import instruments

logger = logging.getLogger(__name__)

MAX_PRIORITY = 9
POLL_SECONDS = 0.1
PLACE_TTL_MS = 5_000
QUEUE_TIMEOUT_RETRY_AFTER = 5


@dataclass(frozen=True)
class QueueTerms:
    """How a caller queues: its priority (0-9, higher first) and its cap on waiting requests."""

    caller: str = "anonymous"  # "key:12", "app:3", "user:7"
    priority: int = 0
    max_queued: int | None = None  # None: settings.QUEUE_MAX_PER_CALLER


class Backend(Protocol):
    async def enter(
        self, model_id: int, member: str, terms: QueueTerms, cap: int, order: int | None
    ) -> int | None:
        """Queue `member` at `order` (None: a new one, after all); None when its caller is at the cap."""

    async def position(self, model_id: int, member: str, terms: QueueTerms) -> int:
        """0 at the head, 1 behind it, -1 when not queued."""

    async def leave(self, model_id: int, member: str, terms: QueueTerms) -> None: ...


def _order(priority: int, arrival: int) -> int:
    """Priority first (higher first), then arrival: a sort key that fits a Redis score exactly."""
    return (MAX_PRIORITY - priority) * 10**13 + arrival


class LocalQueues:
    """The queues of this process: per model, a list of (order, member) kept sorted."""

    def __init__(self) -> None:
        self._queues: dict[int, list[tuple[int, str]]] = {}
        self._callers: Counter[str] = Counter()
        self._arrivals = itertools.count(1)

    async def enter(
        self, model_id: int, member: str, terms: QueueTerms, cap: int, order: int | None
    ) -> int | None:
        if cap and self._callers[terms.caller] >= cap:
            return None
        self._callers[terms.caller] += 1
        if order is None:
            order = _order(terms.priority, next(self._arrivals))
        bisect.insort(self._queues.setdefault(model_id, []), (order, member))
        return order

    async def position(self, model_id: int, member: str, terms: QueueTerms) -> int:
        queue = self._queues.get(model_id) or []
        if queue and queue[0][1] == member:
            return 0
        return 1 if any(item[1] == member for item in queue) else -1

    async def leave(self, model_id: int, member: str, terms: QueueTerms) -> None:
        queue = self._queues.get(model_id, [])
        kept = [item for item in queue if item[1] != member]
        if len(kept) < len(queue):
            self._callers[terms.caller] -= 1
            if self._callers[terms.caller] <= 0:
                del self._callers[terms.caller]
        if kept:
            self._queues[model_id] = kept
        else:
            self._queues.pop(model_id, None)

    def waiting(self, model_id: int) -> int:
        return len(self._queues.get(model_id, ()))

    def clear(self) -> None:
        self._queues.clear()
        self._callers.clear()


# KEYS: the model's queue, its places' expiries, the caller's places, the arrival counter.
# ARGV: member, priority band, cap (0: none), place TTL in ms, order ("" for a new one, after all).
# Returns the member's order as a string, or 0 when the caller is at its cap.
ENTER_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local cap = tonumber(ARGV[3])
if cap > 0 and redis.call('ZCARD', KEYS[3]) >= cap then return 0 end
local order = ARGV[5]
if order == '' then
  order = string.format('%.0f', tonumber(ARGV[2]) * 1e13 + redis.call('INCR', KEYS[4]))
end
redis.call('ZADD', KEYS[1], order, ARGV[1])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], 10 * ttl) end
return order
"""

# KEYS: the model's queue, its places' expiries, the caller's places. ARGV: member, place TTL in ms.
# Renews the member's place, drops expired places ahead of it, returns 0 at the head, 1 behind, -1 gone.
POSITION_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return -1 end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
redis.call('ZADD', KEYS[3], 'XX', now + ttl, ARGV[1])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], 10 * ttl) end
for _ = 1, 100 do
  local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if head == ARGV[1] then return 0 end
  local expiry = redis.call('ZSCORE', KEYS[2], head)
  if expiry and tonumber(expiry) > now then return 1 end
  redis.call('ZREM', KEYS[1], head)
  redis.call('ZREM', KEYS[2], head)
end
return 1
"""


class _Connection(NamedTuple):
    client: redis.asyncio.Redis
    enter: AsyncScript
    position: AsyncScript


class RedisQueues:
    """The queues in Redis, shared by every portal: one script call per step."""

    def __init__(self, url: str, loops: Loops) -> None:
        self.url = url
        self._loops = loops

    def _connect(self) -> _Connection:
        client = redis_client(self.url)  # bounded waits (REDIS_TIMEOUT_SECONDS)
        return _Connection(client, client.register_script(ENTER_LUA), client.register_script(POSITION_LUA))

    def _here(self) -> _Connection:
        return self._loops.get(("queue", self.url), self._connect)

    @staticmethod
    def _keys(model_id: int, terms: QueueTerms) -> list[str]:
        base = "portal:queue:{q}"  # one hash slot for every queue key: the scripts touch several
        return [f"{base}:model:{model_id}", f"{base}:model:{model_id}:alive", f"{base}:caller:{terms.caller}"]

    async def enter(
        self, model_id: int, member: str, terms: QueueTerms, cap: int, order: int | None
    ) -> int | None:
        keys = [*self._keys(model_id, terms), "portal:queue:{q}:arrivals"]
        args = (member, MAX_PRIORITY - terms.priority, cap, PLACE_TTL_MS, "" if order is None else order)
        answer = await self._here().enter(keys=keys, args=args)
        return int(answer) or None

    async def position(self, model_id: int, member: str, terms: QueueTerms) -> int:
        script = self._here().position
        return int(await script(keys=self._keys(model_id, terms), args=(member, PLACE_TTL_MS)))

    async def leave(self, model_id: int, member: str, terms: QueueTerms) -> None:
        queue, alive, caller = self._keys(model_id, terms)
        async with self._here().client.pipeline(transaction=False) as pipe:
            for key in (queue, alive, caller):
                pipe.zrem(key, member)
            await pipe.execute()


class Queues:
    """This process's way into the queues: the backend, its own queued count per model, its wakers."""

    def __init__(self, loops: Loops) -> None:
        self.local = LocalQueues()
        self._loops = loops
        self._redis: RedisQueues | None = None
        self._wakers: set[asyncio.Future[None]] = set()
        self._waiting_here: Counter[int] = Counter()  # queued requests per model, whatever the backend

    def shared(self) -> Backend:
        """Redis when REDIS_URL is set, this process otherwise (read at call time)."""
        url = settings.REDIS_URL
        if not url:
            return self.local
        if self._redis is None or self._redis.url != url:
            self._redis = RedisQueues(url, self._loops)
        return self._redis

    def waiting_here(self, model_id: int) -> int:
        """Requests of this portal queued for the model: a new arrival queues behind them."""
        return self._waiting_here[model_id]

    def count(self, model_id: int, step: int) -> None:
        self._waiting_here[model_id] += step
        if self._waiting_here[model_id] <= 0:
            del self._waiting_here[model_id]

    def wake(self) -> None:
        """A request ended on this portal: a slot may have freed, the queued heads try again now."""
        for waker in self._wakers:
            if not waker.done():
                waker.set_result(None)

    async def sleep_until_woken(self, seconds: float) -> None:
        waker = asyncio.get_running_loop().create_future()
        self._wakers.add(waker)
        try:
            await asyncio.wait_for(waker, timeout=max(0.0, seconds))
        except TimeoutError:
            pass
        finally:
            self._wakers.discard(waker)


class Place:
    """A request's place in its model's queue: taken by `wait_turn`, given up while it tries a worker.

    The place keeps its order when given up: a request that a worker then
    refuses as busy queues again where it was, at the head.
    """

    def __init__(
        self,
        queues: Queues,
        *,
        model_id: int,
        model_name: str,
        timeout: float,
        member: str,
        terms: QueueTerms,
    ) -> None:
        self.queues = queues
        self.model_id = model_id
        self.model_name = model_name
        self.timeout = timeout
        self.member = member
        self.terms = terms
        self.backend: Backend | None = None  # set while queued
        self._order: int | None = None  # set once it has queued
        self._entered = self._deadline = 0.0

    @property
    def enabled(self) -> bool:
        return self.timeout > 0

    @property
    def queued(self) -> bool:
        """Whether it has ever queued: then it tries workers that the figures call full."""
        return self._order is not None

    async def wait_turn(self) -> None:
        """Return once this request is at the head of its queue; 503 when its time in the queue is up."""
        first = self._order is None
        if self.backend is None:  # first, or back after a try that a busy worker refused
            await self._enter()
        if not first:
            await self._sleep()
        while True:
            if time.monotonic() >= self._deadline:
                waited = f"{self.timeout:g} s"
                raise no_worker(
                    f"Every worker serving '{self.model_name}' stayed busy for {waited}; retry later.",
                    retry_after=QUEUE_TIMEOUT_RETRY_AFTER,
                )
            position = await self._position()
            if position == 0:
                return
            if position < 0:  # its place expired (a stall longer than PLACE_TTL_MS, a Redis restart)
                await self._enter()
                continue
            await self._sleep()

    async def leave(self) -> None:
        """Give up the place (the request is about to try a worker, or it ends); the next in line may go."""
        backend, self.backend = self.backend, None
        if backend is None:
            return
        self.queues.count(self.model_id, -1)
        instruments.queued(self.model_name).dec()
        try:
            await backend.leave(self.model_id, self.member, self.terms)
        except RedisError as exc:  # the place expires by itself
            logger.warning("could not leave the request queue in Redis: %s", exc)
        self.queues.wake()

    async def close(self) -> None:
        """The request got its worker or ended: leave, and count the time it spent queued."""
        await self.leave()
        if self.queued:
            instruments.record_queue_wait(model=self.model_name, seconds=time.monotonic() - self._entered)

    async def _enter(self) -> None:
        first = self._order is None
        # The cap applies when a request first queues, not when it takes its place back.
        cap = 0 if not first else self.terms.max_queued
        if cap is None:
            cap = settings.QUEUE_MAX_PER_CALLER
        backend = self.queues.shared()
        try:
            order = await backend.enter(self.model_id, self.member, self.terms, cap, self._order)
        except RedisError as exc:
            logger.warning("the request queue in Redis cannot be reached (%s): queueing in this portal", exc)
            backend = self.queues.local
            order = await backend.enter(self.model_id, self.member, self.terms, cap, self._order)
        if order is None:
            raise GatewayError(
                f"Too many of your requests are already waiting for a worker (at most {cap}); retry later.",
                status_code=429,
                error_type="rate_limit_error",
                code="queue_limit_exceeded",
                retry_after=2,
            )
        if self.backend is None:
            self.queues.count(self.model_id, 1)
            instruments.queued(self.model_name).inc()
        self.backend, self._order = backend, order
        if first:
            self._entered = time.monotonic()
            self._deadline = self._entered + self.timeout

    async def _position(self) -> int:
        assert self.backend is not None
        try:
            return await self.backend.position(self.model_id, self.member, self.terms)
        except RedisError as exc:
            logger.warning("the request queue in Redis cannot be reached (%s): queueing in this portal", exc)
            return -1

    async def _sleep(self) -> None:
        await self.queues.sleep_until_woken(min(POLL_SECONDS, self._deadline - time.monotonic()))
