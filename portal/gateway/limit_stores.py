"""Where the limits' counts live: this process's memory, or Redis shared by every portal.

Both stores do the same two things atomically. `reserve` checks every limit
of a quota and, only if all pass, counts the request: one more request in
this minute, its reserved tokens in this minute, one more entry in flight.
`settle` frees the in-flight entry and replaces the reserved tokens by the
tokens used. Windows are fixed minutes (`WINDOW_SECONDS`); an in-flight entry
carries an expiry (`IN_FLIGHT_LEASE_SECONDS`), so that the slots of a portal
that died free themselves.

In Redis each step is one Lua script (redis.asyncio `register_script`), timed
by the Redis server's clock so that portals with skewed clocks agree on the
minute. Its keys share one hash tag per subject.

When Redis fails (an error, or no answer within REDIS_TIMEOUT_SECONDS), the
`RedisStore` says so (`Outage`: a metric, a warning at most once a minute)
and the limits count in its `FallbackStore`, this process's memory, against
this portal's share of each limit (÷ PORTAL_COUNT). Redis is left alone for
RETRY_SECONDS, then one request tries it again; the first answer puts the
counting back in Redis and replays the settlings that failed meanwhile, so
that in-flight slots held there are freed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from django.conf import settings
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from portal.gateway.per_loop import Loops, redis_client
from portal.gateway.tasks import spawn
from portal.metrics import instruments

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
# A request still running after this long stops holding its in-flight slot; a dead portal's slots
# are free again after it.
IN_FLIGHT_LEASE_SECONDS = 900
OK, IN_FLIGHT, RPM, TPM, TOO_LARGE = "ok", "in_flight", "rpm", "tpm", "too_large"
RETRY_SECONDS = 2.0  # after Redis failed, the limits count in this process this long before trying it again
WARN_SECONDS = 60.0  # at most one warning this often while Redis fails
UNSETTLED_MAX = 10_000  # settlings kept for Redis's return; the oldest go first (their entries expire)


@dataclass(frozen=True)
class Quota:
    """Who is limited (`subject`, e.g. "key:12") and how; None or 0 means no such limit."""

    subject: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_in_flight: int | None = None

    @property
    def limited(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.max_in_flight)

    def share(self, portals: int) -> Quota:
        """One of `portals` portals' part of each limit that is on (at least 1)."""

        def part(limit: int | None) -> int | None:
            return max(1, limit // portals) if limit else limit

        return replace(
            self,
            requests_per_minute=part(self.requests_per_minute),
            tokens_per_minute=part(self.tokens_per_minute),
            max_in_flight=part(self.max_in_flight),
        )


@dataclass(frozen=True)
class Admission:
    """A store's answer to `reserve`: OK, or which limit refused and in how many seconds to retry."""

    outcome: str
    window: int
    retry_after: int = 0


class LimitStore(Protocol):
    async def reserve(self, quota: Quota, tokens: int, flight_id: str) -> Admission:
        """Count the request if every limit of `quota` allows it (atomically)."""
        ...

    async def settle(self, subject: str, window: int, reserved: int, used: int, flight_id: str) -> None:
        """Free `flight_id` and turn `reserved` tokens of minute `window` into `used`."""
        ...


def _retry_after(now: float) -> int:
    return int(WINDOW_SECONDS - now % WINDOW_SECONDS) + 1


class MemoryStore:
    """The counts of this process (embedded mode: one portal), behind a lock for tests' extra loops."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[int, dict[str, int]] = {}  # minute → "rpm:subject" / "tpm:subject" → count
        self._flights: dict[str, dict[str, float]] = {}  # subject → flight id → expiry

    async def reserve(self, quota: Quota, tokens: int, flight_id: str) -> Admission:
        with self._lock:
            return self._reserve(quota, tokens, flight_id)

    def _reserve(self, quota: Quota, tokens: int, flight_id: str) -> Admission:
        now = self._clock()
        window = int(now // WINDOW_SECONDS)
        if window not in self._counts:
            self._forget_before(window, now)
        counts = self._counts.setdefault(window, {})
        rpm_key, tpm_key = f"rpm:{quota.subject}", f"tpm:{quota.subject}"
        flights = self._flights.get(quota.subject, {})
        if quota.tokens_per_minute and tokens > quota.tokens_per_minute:
            return Admission(TOO_LARGE, window)
        if quota.max_in_flight:
            for expired in [f for f, until in flights.items() if until <= now]:
                del flights[expired]
            if len(flights) >= quota.max_in_flight:
                return Admission(IN_FLIGHT, window, 1)
        if quota.requests_per_minute and counts.get(rpm_key, 0) >= quota.requests_per_minute:
            return Admission(RPM, window, _retry_after(now))
        if quota.tokens_per_minute and counts.get(tpm_key, 0) + tokens > quota.tokens_per_minute:
            return Admission(TPM, window, _retry_after(now))
        if quota.max_in_flight:
            self._flights.setdefault(quota.subject, flights)[flight_id] = now + IN_FLIGHT_LEASE_SECONDS
        if quota.requests_per_minute:
            counts[rpm_key] = counts.get(rpm_key, 0) + 1
        if quota.tokens_per_minute:
            counts[tpm_key] = counts.get(tpm_key, 0) + tokens
        return Admission(OK, window)

    def _forget_before(self, window: int, now: float) -> None:
        # Bounded memory: minutes before the previous one and expired flights go as time moves on.
        self._counts = {w: c for w, c in self._counts.items() if w >= window - 1}
        for subject, flights in list(self._flights.items()):
            for expired in [f for f, until in flights.items() if until <= now]:
                del flights[expired]
            if not flights:
                del self._flights[subject]

    async def settle(self, subject: str, window: int, reserved: int, used: int, flight_id: str) -> None:
        with self._lock:
            flights = self._flights.get(subject)
            if flight_id and flights is not None:
                flights.pop(flight_id, None)
                if not flights:
                    del self._flights[subject]
            counts = self._counts.get(window)
            key = f"tpm:{subject}"
            if used != reserved and counts is not None and key in counts:
                counts[key] = max(0, counts[key] + used - reserved)

    def in_flight(self, subject: str) -> int:
        """Entries in flight for `subject` (tests)."""
        with self._lock:
            return len(self._flights.get(subject, {}))

    def used(self, subject: str, kind: str = "tpm", window: int | None = None) -> int:
        """`subject`'s count of `kind` ("rpm" or "tpm") in minute `window` (default: this one; tests)."""
        with self._lock:
            if window is None:
                window = int(self._clock() // WINDOW_SECONDS)
            return self._counts.get(window, {}).get(f"{kind}:{subject}", 0)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self._flights.clear()


RESERVE_LUA = """
local prefix = KEYS[1]
local rpm, tpm, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, id = tonumber(ARGV[4]), ARGV[5]
local lease, width = tonumber(ARGV[6]), tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = math.floor(now / width)
local retry = math.floor(width - now % width) + 1
local rpm_key = prefix .. ':rpm:' .. window
local tpm_key = prefix .. ':tpm:' .. window
local flight_key = prefix .. ':flight'
if tpm > 0 and tokens > tpm then return {'too_large', window, 0} end
if most > 0 then
  redis.call('ZREMRANGEBYSCORE', flight_key, '-inf', now)
  if redis.call('ZCARD', flight_key) >= most then return {'in_flight', window, 1} end
end
if rpm > 0 and tonumber(redis.call('GET', rpm_key) or '0') >= rpm then return {'rpm', window, retry} end
if tpm > 0 and tonumber(redis.call('GET', tpm_key) or '0') + tokens > tpm then
  return {'tpm', window, retry}
end
if most > 0 then
  redis.call('ZADD', flight_key, now + lease, id)
  redis.call('EXPIRE', flight_key, lease + 1)
end
if rpm > 0 then
  redis.call('INCR', rpm_key)
  redis.call('EXPIRE', rpm_key, 2 * width)
end
if tpm > 0 then
  redis.call('INCRBY', tpm_key, tokens)
  redis.call('EXPIRE', tpm_key, 2 * width)
end
return {'ok', window, 0}
"""

SETTLE_LUA = """
local prefix = KEYS[1]
local window, reserved, used, id = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
if id ~= '' then redis.call('ZREM', prefix .. ':flight', id) end
local tpm_key = prefix .. ':tpm:' .. window
if used ~= reserved and redis.call('EXISTS', tpm_key) == 1 then
  redis.call('INCRBY', tpm_key, used - reserved)
end
return 1
"""


class FallbackStore(MemoryStore):
    """This process's share of every limit (÷ PORTAL_COUNT), counted here while Redis fails."""

    async def reserve(self, quota: Quota, tokens: int, flight_id: str) -> Admission:
        instruments.record_limits_fallback(subject=quota.subject)
        share = quota.share(settings.PORTAL_COUNT)
        if share.tokens_per_minute and tokens > share.tokens_per_minute:
            # Within the whole limit (limits.reserve checked it), beyond this portal's share of it:
            # it may pass once Redis answers, or in the next minute.
            now = self._clock()
            return Admission(TPM, int(now // WINDOW_SECONDS), _retry_after(now))
        return await super().reserve(share, tokens, flight_id)


class Outage:
    """Whether Redis failed lately, said in /metrics and, at most once a minute, in the log."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._retry_at: float | None = None  # None: Redis answers
        self._warned_at: float | None = None
        self._announce_return = False  # a warning went out: say when Redis is back (once)

    def skip(self) -> bool:
        """True while Redis failed less than RETRY_SECONDS ago; then False for one caller, which tries it."""
        if self._retry_at is None:
            return False
        now = self._clock()
        if now < self._retry_at:
            return True
        self._retry_at = now + RETRY_SECONDS  # the others go on counting here while this one tries
        return False

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        if self._retry_at is None:
            instruments.limits_redis_down(True)
        self._retry_at = now + RETRY_SECONDS
        if self._warned_at is None or now - self._warned_at >= WARN_SECONDS:
            self._warned_at, self._announce_return = now, True
            logger.warning(
                "limits: Redis failed (%s: %s); each limit is counted in this process at 1/%d of its "
                "value until Redis answers",
                type(exc).__name__,
                exc,
                settings.PORTAL_COUNT,
            )

    def answered(self) -> bool:
        """Redis answered; True when it had failed."""
        if self._retry_at is None:
            return False
        self._retry_at = None
        instruments.limits_redis_down(False)
        if self._announce_return:
            self._announce_return = False
            logger.warning("limits: Redis answers again; the limits are counted there again")
        return True


class RedisStore:
    """The counts in Redis, shared by every portal copy: one script call per reserve and per settle.

    A call that fails raises (RedisError, or OSError) after marking the
    `outage`; `fallback` then counts this process's share.
    """

    def __init__(self, url: str, loops: Loops) -> None:
        self.url = url
        self._loops = loops
        self.outage = Outage()
        self.fallback = FallbackStore()
        self._unsettled: deque[tuple[str, tuple[int, int, int, str]]] = deque(maxlen=UNSETTLED_MAX)

    def _connect(self) -> tuple[AsyncScript, AsyncScript]:
        client = redis_client(self.url)
        return client.register_script(RESERVE_LUA), client.register_script(SETTLE_LUA)

    def _scripts(self) -> tuple[AsyncScript, AsyncScript]:
        return self._loops.get(("limits", self.url), self._connect)

    @staticmethod
    def prefix(subject: str) -> str:
        return f"portal:limits:{{{subject}}}"

    async def reserve(self, quota: Quota, tokens: int, flight_id: str) -> Admission:
        args = (
            quota.requests_per_minute or 0,
            quota.tokens_per_minute or 0,
            quota.max_in_flight or 0,
            tokens,
            flight_id,
            IN_FLIGHT_LEASE_SECONDS,
            WINDOW_SECONDS,
        )
        try:
            answer = await self._scripts()[0](keys=[self.prefix(quota.subject)], args=args)
        except (RedisError, OSError) as exc:
            self.outage.failed(exc)
            raise
        self._answered()
        outcome, window, retry_after = answer
        return Admission(outcome.decode(), int(window), int(retry_after))

    async def settle(self, subject: str, window: int, reserved: int, used: int, flight_id: str) -> None:
        args = (window, reserved, used, flight_id)
        try:
            await self._scripts()[1](keys=[self.prefix(subject)], args=args)
        except (RedisError, OSError) as exc:
            self._unsettled.append((subject, args))
            self.outage.failed(exc)
            raise
        self._answered()

    def _answered(self) -> None:
        if self.outage.answered() and self._unsettled:
            spawn(self._settle_backlog())

    async def _settle_backlog(self) -> None:
        """Replay the settlings that failed while Redis was away, oldest first."""
        while self._unsettled:
            subject, args = self._unsettled.popleft()
            try:
                await self._scripts()[1](keys=[self.prefix(subject)], args=args)
            except (RedisError, OSError) as exc:
                self._unsettled.appendleft((subject, args))
                self.outage.failed(exc)  # the next answer replays the rest
                return


class LimitStores:
    """Where this process counts: its memory without REDIS_URL, Redis (and its fallback) with it.

    REDIS_URL is read at call time.
    """

    def __init__(self, loops: Loops) -> None:
        self.memory = MemoryStore()
        self._loops = loops
        self._redis: RedisStore | None = None

    def redis(self, url: str) -> RedisStore:
        if self._redis is None or self._redis.url != url:
            self._redis = RedisStore(url, self._loops)
        return self._redis

    def store(self) -> LimitStore:
        """Redis when REDIS_URL is set (its fallback while it fails), this process's memory otherwise."""
        url = settings.REDIS_URL
        if not url:
            return self.memory
        store = self.redis(url)
        return store.fallback if store.outage.skip() else store

    def fallback(self) -> LimitStore:
        """Where to count after the Redis store failed: this process's share of each limit."""
        url = settings.REDIS_URL
        return self.redis(url).fallback if url else self.memory
