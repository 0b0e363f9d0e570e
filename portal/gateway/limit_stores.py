"""Where the limits' counts live: this process's memory, or Redis shared by every portal.

Both stores do the same two things atomically. `reserve` checks every limit
of a quota and, only if all pass, counts the request: one more request in
this minute, its reserved tokens in this minute, one more entry in flight.
`settle` frees the in-flight entry and replaces the reserved tokens by the
tokens used. Windows are fixed minutes (`WINDOW_SECONDS`); an in-flight entry
carries an expiry (`IN_FLIGHT_LEASE_SECONDS`), so that the slots of a portal
that died free themselves.

A quota's budgets (a team's, a key's own: `teams.budgets.BudgetLimits`) are
checked and counted in the same step: tokens per UTC day and per calendar
month, micro-dollars per month. The request's reservation is counted against
each of them, or against none when one refuses; settling replaces it by what
the request used, in the day and month it was reserved in.

In Redis each step is one Lua script (redis.asyncio `register_script`), timed
by the Redis server's clock so that portals with skewed clocks agree on the
minute, the day and the month. Its keys share one hash tag per subject; a
quota with budgets touches several subjects in one script (one Redis server,
not a cluster).

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
from datetime import UTC, date, datetime
from typing import Protocol

from django.conf import settings
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from portal.gateway.per_loop import Loops, redis_client
from portal.gateway.tasks import spawn
from portal.metrics import instruments
from teams.budgets import BudgetLimits

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
# A request still running after this long stops holding its in-flight slot; a dead portal's slots
# are free again after it.
IN_FLIGHT_LEASE_SECONDS = 900
OK, IN_FLIGHT, RPM, TPM, TOO_LARGE = "ok", "in_flight", "rpm", "tpm", "too_large"
DAY, MONTH, USD = "day", "month", "usd"  # a budget refused: its tokens today, this month, its dollars
DAY_SECONDS = 86_400
PERIOD_TTL = {DAY: 2 * DAY_SECONDS, MONTH: 32 * DAY_SECONDS, USD: 32 * DAY_SECONDS}
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
    budgets: tuple[BudgetLimits, ...] = ()  # the team's and the subject's own, counted with the rest

    @property
    def limited(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.max_in_flight or self.budgets)

    @property
    def counts_money(self) -> bool:
        return any(b.microusd_per_month for b in self.budgets)

    def share(self, portals: int) -> Quota:
        """One of `portals` portals' part of each limit that is on (at least 1)."""

        def part(limit: int | None) -> int | None:
            return max(1, limit // portals) if limit else limit

        return replace(
            self,
            requests_per_minute=part(self.requests_per_minute),
            tokens_per_minute=part(self.tokens_per_minute),
            max_in_flight=part(self.max_in_flight),
            budgets=tuple(b.share(portals) for b in self.budgets),
        )


@dataclass(frozen=True)
class Admission:
    """A store's answer to `reserve`: OK, or which limit refused and in how many seconds to retry.

    `day` and `month` are the periods the budgets were counted in (UTC day
    number; year × 12 + month − 1); `budget` is the index in the quota's
    budgets of the one that refused.
    """

    outcome: str
    window: int
    retry_after: int = 0
    day: int = 0
    month: int = 0
    budget: int = 0


@dataclass(frozen=True)
class Settlement:
    """What `settle` needs: the counts to correct and the in-flight entry to free."""

    subject: str
    window: int
    reserved: int
    used: int
    flight_id: str = ""
    budgets: tuple[str, ...] = ()  # the budgets' subjects
    day: int = 0
    month: int = 0
    money_reserved: int = 0
    money_used: int = 0


class LimitStore(Protocol):
    async def reserve(self, quota: Quota, tokens: int, flight_id: str, money: int = 0) -> Admission:
        """Count the request if every limit and budget of `quota` allows it (atomically)."""
        ...

    async def settle(self, settlement: Settlement) -> None:
        """Free its flight id and turn its reserved tokens and money into those used."""
        ...


def _retry_after(now: float) -> int:
    return int(WINDOW_SECONDS - now % WINDOW_SECONDS) + 1


def month_of(day: int) -> int:
    """The month of UTC day number `day`, as year × 12 + month − 1."""
    when = date.fromordinal(date(1970, 1, 1).toordinal() + day)
    return when.year * 12 + when.month - 1


def seconds_to_next(period: str, now: float) -> int:
    """Seconds until the next UTC day or calendar month starts, from `now` (at least 1)."""
    if period == DAY:
        return int(DAY_SECONDS - now % DAY_SECONDS) + 1
    today = datetime.fromtimestamp(now, UTC)
    year, month = (today.year + 1, 1) if today.month == 12 else (today.year, today.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() - now) + 1


def _budget_refusal(
    budgets: tuple[BudgetLimits, ...], count: Callable[[str], int], tokens: int, money: int
) -> tuple[str, int] | None:
    """The first budget that the request's tokens or money would exceed: (period, index); None: all fit."""
    for index, budget in enumerate(budgets):
        checks = (
            (DAY, budget.tokens_per_day, tokens),
            (MONTH, budget.tokens_per_month, tokens),
            (USD, budget.microusd_per_month, money),
        )
        for period, limit, amount in checks:
            if limit and amount and count(f"{period}:{budget.subject}") + amount > limit:
                return period, index
    return None


class MemoryStore:
    """The counts of this process (embedded mode: one portal), behind a lock for tests' extra loops."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[int, dict[str, int]] = {}  # minute → "rpm:subject" / "tpm:subject" → count
        self._flights: dict[str, dict[str, float]] = {}  # subject → flight id → expiry
        # "day:subject" / "month:subject" / "usd:subject" → (period, count): this period's count only.
        self._periods: dict[str, tuple[int, int]] = {}

    async def reserve(self, quota: Quota, tokens: int, flight_id: str, money: int = 0) -> Admission:
        with self._lock:
            return self._reserve(quota, tokens, flight_id, money)

    def _period_count(self, key: str, period: int) -> int:
        held = self._periods.get(key)
        return held[1] if held is not None and held[0] == period else 0

    def _count_period(self, key: str, period: int, amount: int) -> None:
        self._periods[key] = (period, max(0, self._period_count(key, period) + amount))

    def _reserve(self, quota: Quota, tokens: int, flight_id: str, money: int = 0) -> Admission:
        now = self._clock()
        window = int(now // WINDOW_SECONDS)
        day = int(now // DAY_SECONDS)
        month = month_of(day)
        periods = {DAY: day, MONTH: month, USD: month}
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
        refused = _budget_refusal(
            quota.budgets, lambda key: self._period_count(key, periods[key.split(":", 1)[0]]), tokens, money
        )
        if refused is not None:
            period, index = refused
            return Admission(period, window, seconds_to_next(period, now), day, month, index)
        if quota.max_in_flight:
            self._flights.setdefault(quota.subject, flights)[flight_id] = now + IN_FLIGHT_LEASE_SECONDS
        if quota.requests_per_minute:
            counts[rpm_key] = counts.get(rpm_key, 0) + 1
        if quota.tokens_per_minute:
            counts[tpm_key] = counts.get(tpm_key, 0) + tokens
        for budget in quota.budgets:
            self._count_period(f"{DAY}:{budget.subject}", day, tokens)
            self._count_period(f"{MONTH}:{budget.subject}", month, tokens)
            self._count_period(f"{USD}:{budget.subject}", month, money)
        return Admission(OK, window, 0, day, month)

    def _forget_before(self, window: int, now: float) -> None:
        # Bounded memory: minutes before the previous one and expired flights go as time moves on.
        self._counts = {w: c for w, c in self._counts.items() if w >= window - 1}
        for subject, flights in list(self._flights.items()):
            for expired in [f for f, until in flights.items() if until <= now]:
                del flights[expired]
            if not flights:
                del self._flights[subject]

    async def settle(self, settlement: Settlement) -> None:
        s = settlement
        with self._lock:
            flights = self._flights.get(s.subject)
            if s.flight_id and flights is not None:
                flights.pop(s.flight_id, None)
                if not flights:
                    del self._flights[s.subject]
            counts = self._counts.get(s.window)
            key = f"tpm:{s.subject}"
            if s.used != s.reserved and counts is not None and key in counts:
                counts[key] = max(0, counts[key] + s.used - s.reserved)
            for subject in s.budgets:
                for period, number, change in (
                    (DAY, s.day, s.used - s.reserved),
                    (MONTH, s.month, s.used - s.reserved),
                    (USD, s.month, s.money_used - s.money_reserved),
                ):
                    held = self._periods.get(f"{period}:{subject}")
                    if change and held is not None and held[0] == number:  # the period it was counted in
                        self._periods[f"{period}:{subject}"] = (number, max(0, held[1] + change))

    def in_flight(self, subject: str) -> int:
        """Entries in flight for `subject` (tests)."""
        with self._lock:
            return len(self._flights.get(subject, {}))

    def used(self, subject: str, kind: str = "tpm", window: int | None = None) -> int:
        """`subject`'s count of `kind` ("rpm", "tpm"; "day", "month", "usd": this period's) (tests)."""
        with self._lock:
            if kind in PERIOD_TTL:
                held = self._periods.get(f"{kind}:{subject}")
                return held[1] if held is not None else 0
            if window is None:
                window = int(self._clock() // WINDOW_SECONDS)
            return self._counts.get(window, {}).get(f"{kind}:{subject}", 0)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self._flights.clear()
            self._periods.clear()


# Howard Hinnant's civil-from-days: the calendar month of a UTC day number, and the day a month starts.
CALENDAR_LUA = """
local function month_of(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)
  yoe = math.floor(yoe / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return y * 12 + m - 1
end
local function first_day(month)
  local y, m = math.floor(month / 12), month % 12 + 1
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5)
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end
"""

RESERVE_LUA = (
    CALENDAR_LUA
    + """
local prefix = KEYS[1]
local rpm, tpm, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, id = tonumber(ARGV[4]), ARGV[5]
local lease, width = tonumber(ARGV[6]), tonumber(ARGV[7])
local money = tonumber(ARGV[8])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = math.floor(now / width)
local retry = math.floor(width - now % width) + 1
local day = math.floor(now / 86400)
local month = month_of(day)
local rpm_key = prefix .. ':rpm:' .. window
local tpm_key = prefix .. ':tpm:' .. window
local flight_key = prefix .. ':flight'
if tpm > 0 and tokens > tpm then return {'too_large', window, 0, day, month, 0} end
if most > 0 then
  redis.call('ZREMRANGEBYSCORE', flight_key, '-inf', now)
  if redis.call('ZCARD', flight_key) >= most then return {'in_flight', window, 1, day, month, 0} end
end
if rpm > 0 and tonumber(redis.call('GET', rpm_key) or '0') >= rpm then
  return {'rpm', window, retry, day, month, 0}
end
if tpm > 0 and tonumber(redis.call('GET', tpm_key) or '0') + tokens > tpm then
  return {'tpm', window, retry, day, month, 0}
end
local periods = {}
for i = 2, #KEYS do
  local base = 9 + 3 * (i - 2)
  local checks = {
    {'day', KEYS[i] .. ':day:' .. day, tonumber(ARGV[base]), tokens},
    {'month', KEYS[i] .. ':month:' .. month, tonumber(ARGV[base + 1]), tokens},
    {'usd', KEYS[i] .. ':usd:' .. month, tonumber(ARGV[base + 2]), money},
  }
  for _, c in ipairs(checks) do
    if c[3] > 0 and c[4] > 0 and tonumber(redis.call('GET', c[2]) or '0') + c[4] > c[3] then
      local wait
      if c[1] == 'day' then wait = 86400 * (day + 1) - now else wait = 86400 * first_day(month + 1) - now end
      return {c[1], window, math.floor(wait) + 1, day, month, i - 2}
    end
    table.insert(periods, c)
  end
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
for _, c in ipairs(periods) do
  redis.call('INCRBY', c[2], c[4])
  redis.call('EXPIRE', c[2], c[1] == 'day' and 172800 or 2764800)
end
return {'ok', window, 0, day, month, 0}
"""
)

SETTLE_LUA = """
local prefix = KEYS[1]
local window, reserved, used, id = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local day, month = ARGV[5], ARGV[6]
local money_change = tonumber(ARGV[8]) - tonumber(ARGV[7])
if id ~= '' then redis.call('ZREM', prefix .. ':flight', id) end
local function change(key, by)
  if by ~= 0 and redis.call('EXISTS', key) == 1 then redis.call('INCRBY', key, by) end
end
change(prefix .. ':tpm:' .. window, used - reserved)
for i = 2, #KEYS do
  change(KEYS[i] .. ':day:' .. day, used - reserved)
  change(KEYS[i] .. ':month:' .. month, used - reserved)
  change(KEYS[i] .. ':usd:' .. month, money_change)
end
return 1
"""


class FallbackStore(MemoryStore):
    """This process's share of every limit (÷ PORTAL_COUNT), counted here while Redis fails."""

    async def reserve(self, quota: Quota, tokens: int, flight_id: str, money: int = 0) -> Admission:
        instruments.record_limits_fallback(subject=quota.subject)
        share = quota.share(settings.PORTAL_COUNT)
        if share.tokens_per_minute and tokens > share.tokens_per_minute:
            # Within the whole limit (limits.reserve checked it), beyond this portal's share of it:
            # it may pass once Redis answers, or in the next minute.
            now = self._clock()
            return Admission(TPM, int(now // WINDOW_SECONDS), _retry_after(now))
        return await super().reserve(share, tokens, flight_id, money)


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
        self._unsettled: deque[Settlement] = deque(maxlen=UNSETTLED_MAX)

    def _connect(self) -> tuple[AsyncScript, AsyncScript]:
        client = redis_client(self.url)
        return client.register_script(RESERVE_LUA), client.register_script(SETTLE_LUA)

    def _scripts(self) -> tuple[AsyncScript, AsyncScript]:
        return self._loops.get(("limits", self.url), self._connect)

    @staticmethod
    def prefix(subject: str) -> str:
        return f"portal:limits:{{{subject}}}"

    async def reserve(self, quota: Quota, tokens: int, flight_id: str, money: int = 0) -> Admission:
        args: list[int | str] = [
            quota.requests_per_minute or 0,
            quota.tokens_per_minute or 0,
            quota.max_in_flight or 0,
            tokens,
            flight_id,
            IN_FLIGHT_LEASE_SECONDS,
            WINDOW_SECONDS,
            money,
        ]
        for budget in quota.budgets:
            args += [budget.tokens_per_day or 0, budget.tokens_per_month or 0, budget.microusd_per_month or 0]
        keys = [self.prefix(quota.subject), *(self.prefix(b.subject) for b in quota.budgets)]
        try:
            answer = await self._scripts()[0](keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self.outage.failed(exc)
            raise
        self._answered()
        outcome, window, retry_after, day, month, budget = answer
        return Admission(outcome.decode(), int(window), int(retry_after), int(day), int(month), int(budget))

    async def _run_settle(self, s: Settlement) -> None:
        keys = [self.prefix(s.subject), *(self.prefix(b) for b in s.budgets)]
        args = (s.window, s.reserved, s.used, s.flight_id, s.day, s.month, s.money_reserved, s.money_used)
        await self._scripts()[1](keys=keys, args=args)

    async def settle(self, settlement: Settlement) -> None:
        try:
            await self._run_settle(settlement)
        except (RedisError, OSError) as exc:
            self._unsettled.append(settlement)
            self.outage.failed(exc)
            raise
        self._answered()

    def _answered(self) -> None:
        if self.outage.answered() and self._unsettled:
            spawn(self._settle_backlog())

    async def _settle_backlog(self) -> None:
        """Replay the settlings that failed while Redis was away, oldest first."""
        while self._unsettled:
            settlement = self._unsettled.popleft()
            try:
                await self._run_settle(settlement)
            except (RedisError, OSError) as exc:
                self._unsettled.appendleft(settlement)
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
