"""Limits that hold: every request is reserved against its caller's quota before dispatch, settled after.

The three doors (the OpenAI API, the signed API, the chat page) build a
`Quota` for their caller (a key, an app, a chat user) and call `reserve`
before any work starts. A reservation counts one request in this minute,
one request in flight and, against tokens per minute, the most the request
can cost: a bound on its prompt plus n × max_tokens (`estimate`). The bound
is one no tokenizer exceeds (`estimate_prompt_tokens`), so a caller cannot
pass a prompt that costs more than it reserved. Concurrent requests cannot
all pass a check that only one of them fits: the reservation is the check.
When the request ends, `Reservation.settle(used)` frees its in-flight slot
and replaces the reserved tokens by the real ones (the relay's Ticket does it
for every path, a client's disconnect included).

A request whose reservation alone exceeds the tokens-per-minute limit is
refused outright, before any store is asked (it could never pass), naming
max_tokens or the prompt. The counts live in this process without REDIS_URL
and in Redis with it (`limit_stores`). While Redis fails (an error, or no
answer within REDIS_TIMEOUT_SECONDS), each portal counts in its own memory
against its share of every limit (the limit ÷ PORTAL_COUNT), says so in
/metrics and, once a minute, in its log; when Redis answers again, the
counting goes back there. An outage of the counter is neither an outage of
the API nor a way around its limits.

Budgets (a team's, a key's own: tokens per day and per month, dollars per
month) ride on the same quota and the same store call: the reservation's
tokens, and its price from the model's prices per million tokens, are
counted against every budget at once; settling replaces them by the tokens
used and their price. Across portals a budget is overshot by at most the
settling of requests already admitted, never by a request it refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import redis

from inference.sampling import DEFAULT_MAX_TOKENS
from portal.gateway.limit_stores import (
    DAY,
    IN_FLIGHT,
    MONTH,
    OK,
    RPM,
    TOO_LARGE,
    USD,
    LimitStore,
    LimitStores,
    Quota,
    Settlement,
)
from portal.gateway.tasks import spawn
from portal.metrics import instruments
from teams.budgets import MICRO, price_microusd

__all__ = ["LimitExceeded", "Quota", "Reservation", "TokenEstimate", "estimate", "reserve"]

logger = logging.getLogger(__name__)

# Allowances of the prompt's bound for what a template or tokenizer adds to the client's text.
SEGMENT_TOKENS = 4  # one text's own specials: BOS or CLS, EOS or SEP, SentencePiece's leading "▁"
MESSAGE_TOKENS = 16  # a chat message's specials, role (at most 9 bytes) and separators
CHAT_TOKENS = 64  # a chat prompt's BOS, a template's default system prompt, the assistant's opening
TOOLS_TOKENS = 256  # a template's words around the tools it lists
MAX_N = 16
NORMAL_GROWTH = 11  # the most NFC or NFKC multiply a character's bytes by (U+FDFA: 3 → 33)
NORMAL_PIECE = 1 << 12  # characters checked, and normalised if they need it, at a time
NORMAL_SECONDS = 0.05  # of the event loop a request's texts may take to normalise
JSON_NODES = 1 << 16  # items of a request's tools and tool calls counted one by one
UNCOUNTABLE = 1 << 40  # the bound of JSON too deep to write: more than any limit
PROMPT_FIELDS = ("messages", "prompt", "input")


class LimitExceeded(Exception):
    """A limit refuses the request: which one (`reason`), why, and when to retry (None: never).

    `param` names the request's field to change when waiting cannot help.
    """

    def __init__(
        self, reason: str, message: str, *, retry_after: int | None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.param = param


@dataclass(frozen=True)
class TokenEstimate:
    """What a request may cost at most: `prompt` (a bound) + `completions` × `max_tokens`.

    `model` is the served model's name when the estimate used its defaults: a
    refusal is counted against it (never against a name a client made up).
    `source` is the body's field that holds the prompt.
    """

    prompt: int = 0
    completions: int = 0
    max_tokens: int = 0
    model: str = ""
    source: str = ""
    input_price: float = 0.0  # the model's dollars per million prompt tokens
    output_price: float = 0.0  # and per million generated tokens

    @property
    def total(self) -> int:
        return self.prompt + self.completions * self.max_tokens

    @property
    def microusd(self) -> int:
        """The most the request may cost, in micro-dollars."""
        return self.price(self.prompt, self.completions * self.max_tokens)

    def price(self, prompt_tokens: int, completion_tokens: int) -> int:
        return price_microusd(prompt_tokens, completion_tokens, self.input_price, self.output_price)


@dataclass
class _Budget:
    """What one request's bound may cost the event loop: normalising texts, walking JSON."""

    until: float = field(default_factory=lambda: time.monotonic() + NORMAL_SECONDS)
    nodes: int = JSON_NODES  # items of the tools' and tool calls' objects and arrays, counted one by one


def text_tokens(text: str, budget: _Budget | None = None) -> int:
    """The most tokens `text` can become: its UTF-8 bytes, or more after a tokenizer's normalisation.

    A byte-level BPE (GPT-2, Llama 3, SmolLM2) or SentencePiece with byte
    fallback yields at most one token per byte; WordPiece and SentencePiece
    without it at most one per character (an unknown word is one [UNK]).
    BERT's NFD splits a character into no more letters than it has bytes
    (a Hangul syllable: 3 and 3) and strips the accents; NFC (Qwen) and NFKC
    (SentencePiece's default) can lengthen a text: "ﷺ" is 3 bytes, 33 after
    NFKC.
    """
    if text.isascii():
        return len(text)
    budget = budget or _Budget()
    return max(_utf8(text), _normal_bytes(text, "NFC", budget), _normal_bytes(text, "NFKC", budget))


def _utf8(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))  # a lone surrogate: refused later, 3 bytes here


def _normal_bytes(text: str, form: Literal["NFC", "NFKC"], budget: _Budget) -> int:
    """The UTF-8 bytes of `text` in `form`, or more: normalised piece by piece while `budget` lasts.

    A text is no shorter in pieces than whole (the pieces only lose
    compositions across their edges). Most pieces are in the form already,
    which is cheap to check; normalising one costs about 0.3 µs a character.
    Once the request's budget is spent, a piece that is not ASCII counts
    NORMAL_GROWTH times its bytes: a large text made to grow (U+FDFA a
    million times makes 18 million characters) costs the event loop little.
    """
    total = 0
    for start in range(0, len(text), NORMAL_PIECE):
        piece = text[start : start + NORMAL_PIECE]
        if piece.isascii():
            total += len(piece)
        elif time.monotonic() > budget.until:
            total += NORMAL_GROWTH * _utf8(piece)
        elif unicodedata.is_normalized(form, piece):
            total += _utf8(piece)
        else:
            total += _utf8(unicodedata.normalize(form, piece))
    return total


def _segment_tokens(value: Any, budget: _Budget, depth: int = 0) -> int:
    """A prompt or an input: a text, token ids (counted exactly), or a list of either (deeper is refused)."""
    if isinstance(value, str):
        return text_tokens(value, budget) + SEGMENT_TOKENS
    if isinstance(value, int) and not isinstance(value, bool):
        return 1
    if isinstance(value, list) and depth < 2:
        return sum(_segment_tokens(item, budget, depth + 1) for item in value)
    return 0


def _json_tokens(value: Any, budget: _Budget) -> int:
    """JSON a template renders (tools, earlier calls), in its widest form: indented by 4 (Llama 3.1's tojson).

    Counted as it would be written, without writing it (indenting a deep
    schema takes bytes quadratic in its depth): object by object and array
    by array, the scalars of one at a time, while the request's budget of
    items lasts; past it, a part counts as if each of its compact bytes
    opened a line as deep as the part is long (refused, in practice).
    """
    if not isinstance(value, dict | list):
        return _scalar_tokens([value], budget)
    tokens, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if len(item) > budget.nodes:
            tokens += _loose_json_tokens(item, depth)
            continue
        budget.nodes -= len(item)
        values = list(item.values()) if isinstance(item, dict) else item
        # Brackets, the closing line's indent, and per item a comma, a newline and its indent.
        tokens += 2 + 4 * depth + len(values) * (2 + 4 * (depth + 1))
        if isinstance(item, dict):
            tokens += _scalar_tokens(list(item), budget) + 2 * len(item)  # the keys and their ": "
        tokens += _scalar_tokens([v for v in values if not isinstance(v, dict | list)], budget)
        stack.extend((v, depth + 1) for v in values if isinstance(v, dict | list))
    return tokens


def _scalar_tokens(values: list[Any], budget: _Budget) -> int:
    """JSON strings, numbers, true, false and null: their list's JSON holds each as written, and more."""
    return text_tokens(json.dumps(values, ensure_ascii=False, default=str), budget) if values else 0


def _loose_json_tokens(item: Any, depth: int) -> int:
    try:
        size = _utf8(json.dumps(item, ensure_ascii=False, default=str))
    except RecursionError:
        return UNCOUNTABLE
    return size * (2 + 4 * (depth + size))


def _calls_as_rendered(calls: Any) -> Any:
    """Earlier tool calls with their arguments as objects, which is how templates get them."""
    if not isinstance(calls, list):
        return calls
    rendered = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        arguments = function.get("arguments") if isinstance(function, dict) else None
        if isinstance(arguments, str):
            # Arguments that are not JSON are refused by the parser later; their string stands here.
            with contextlib.suppress(ValueError, RecursionError):
                call = {**call, "function": {**function, "arguments": json.loads(arguments)}}  # type: ignore[dict-item]
        rendered.append(call)
    return rendered


def _message_tokens(message: Any, budget: _Budget) -> int:
    if not isinstance(message, dict):
        return MESSAGE_TOKENS
    tokens = MESSAGE_TOKENS
    content = message.get("content")
    parts = content if isinstance(content, list) else [content]
    for part in parts:
        text = part.get("text") if isinstance(part, dict) else part
        tokens += text_tokens(text, budget) if isinstance(text, str) else 0
    for name in ("name", "tool_call_id"):
        tokens += text_tokens(message[name], budget) if isinstance(message.get(name), str) else 0
    if message.get("tool_calls") is not None:
        tokens += _json_tokens(_calls_as_rendered(message["tool_calls"]), budget)
    return tokens


def estimate_prompt_tokens(body: Any) -> int:
    """An upper bound on the prompt's tokens, without the model's tokenizer.

    Texts count by `text_tokens`, plus SEGMENT_TOKENS for the specials each
    prompt or input gets; token ids count one each. A chat adds its
    template's share: MESSAGE_TOKENS a message, CHAT_TOKENS once, and the
    tools' JSON plus TOOLS_TOKENS. The reservation holds it until the real
    count settles it; a record that no worker counted keeps it.
    """
    if not isinstance(body, dict):
        return 0
    tokens, budget = 0, _Budget()  # one for the whole request
    messages = body.get("messages")
    if isinstance(messages, list):
        tokens += CHAT_TOKENS + sum(_message_tokens(message, budget) for message in messages)
        if body.get("tools"):
            tokens += TOOLS_TOKENS + _json_tokens(body["tools"], budget)
    for name in ("prompt", "input"):
        tokens += _segment_tokens(body.get(name), budget)
    return tokens


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def estimate(body: Any, defaults: Mapping[str, Any] | None = None) -> TokenEstimate:
    """The reservation for an OpenAI request body: the prompt's bound + n × max_tokens (per prompt).

    `max_completion_tokens` wins over `max_tokens` (as the parser reads them), then the model's default
    (`defaults`), then inference.sampling.DEFAULT_MAX_TOKENS. A body without
    `messages` or `prompt` (embeddings, the echo pipeline) generates nothing.
    """
    prompt = estimate_prompt_tokens(body)
    if not isinstance(body, dict):
        return TokenEstimate(prompt=prompt)
    source = next((name for name in PROMPT_FIELDS if name in body), "")
    if "messages" not in body and "prompt" not in body:
        return TokenEstimate(prompt=prompt, source=source)
    if body.get("max_tokens") == 0 and body.get("echo") is True and body.get("max_completion_tokens") is None:
        return TokenEstimate(prompt=prompt, source=source)  # the prompts' logprobs alone: nothing generated
    max_tokens = (
        _positive_int(body.get("max_completion_tokens"))
        or _positive_int(body.get("max_tokens"))
        or _positive_int((defaults or {}).get("max_tokens"))
        or DEFAULT_MAX_TOKENS
    )
    # Every candidate is generated and billed: best_of of them when it is above n.
    n = max(_positive_int(body.get("n")) or 1, _positive_int(body.get("best_of")) or 1)
    prompts = body.get("prompt")
    # A list of texts or of token-id lists is several prompts (a list of ints is one).
    count = (
        len(prompts) if isinstance(prompts, list) and all(isinstance(p, str | list) for p in prompts) else 1
    )
    completions = min(n, MAX_N) * max(count, 1)
    return TokenEstimate(prompt=prompt, completions=completions, max_tokens=max_tokens, source=source)


@dataclass
class Reservation:
    """One request's hold on its quota until `settle`; the relay's Ticket settles it on every path."""

    quota: Quota
    estimate: TokenEstimate
    window: int = 0
    tokens: int = 0  # reserved against tokens per minute and the budgets (0 when none is on)
    flight_id: str = ""  # its in-flight entry ("" when that limit is off)
    store: LimitStore | None = field(default=None, repr=False)  # where it is counted (None: nowhere)
    claimed: bool = field(default=False, repr=False)  # a Ticket owns the settling now
    settled: bool = field(default=False, repr=False)
    day: int = 0  # the UTC day and the month its budgets were counted in
    month: int = 0
    money: int = 0  # micro-dollars reserved against money budgets (0 when none is on)

    def settle(self, used_tokens: int, completion_tokens: int = 0) -> None:
        """Free the in-flight slot and count the tokens used instead of the reservation (once).

        `used_tokens` are prompt tokens (priced as input) and
        `completion_tokens` generated ones; both count against token limits.
        """
        if self.settled:
            return
        self.settled = True
        if self.store is not None and (self.tokens or self.flight_id or self.money):
            used, generated = max(0, used_tokens), max(0, completion_tokens)
            settlement = Settlement(
                subject=self.quota.subject,
                window=self.window,
                reserved=self.tokens,
                used=used + generated if self.tokens else 0,
                flight_id=self.flight_id,
                budgets=tuple(b.subject for b in self.quota.budgets),
                day=self.day,
                month=self.month,
                money_reserved=self.money,
                money_used=self.estimate.price(used, generated) if self.money else 0,
            )
            spawn(self._settle(self.store, settlement))

    async def _settle(self, store: LimitStore, settlement: Settlement) -> None:
        try:
            await store.settle(settlement)
        except (redis.RedisError, OSError) as exc:  # the store keeps it and retries once Redis answers
            logger.warning("limits: settling for %s is delayed, Redis failed: %s", self.quota.subject, exc)


def _too_large(quota: Quota, cost: TokenEstimate) -> LimitExceeded:
    limit = f"this caller's limit of {quota.tokens_per_minute} tokens per minute"
    prompt = cost.source or "prompt"
    if not cost.completions:
        message = (
            f"This request's {prompt} may take up to {cost.prompt} tokens, more than {limit}: shorten it."
        )
        return LimitExceeded(TOO_LARGE, message, retry_after=None, param=cost.source or None)
    prompt_alone = cost.prompt > (quota.tokens_per_minute or 0)
    message = (
        f"This request may use up to {cost.total} tokens (up to {cost.prompt} in the prompt plus "
        f"{cost.completions} × max_tokens {cost.max_tokens}), more than {limit}: "
        + (f"shorten the prompt ({prompt})." if prompt_alone else "lower max_tokens.")
    )
    param = (cost.source or None) if prompt_alone else "max_tokens"
    return LimitExceeded(TOO_LARGE, message, retry_after=None, param=param)


def _dollars(microusd: int) -> str:
    """Dollars with cents, or with as many decimals as a smaller amount needs ($0.0005)."""
    if microusd % 10_000 == 0:
        return f"${microusd / MICRO:,.2f}"
    return f"${microusd / MICRO:,.6f}".rstrip("0")


def _budget_refusal(
    quota: Quota, outcome: str, index: int, retry_after: int, cost: TokenEstimate
) -> LimitExceeded:
    budget = quota.budgets[index]
    if outcome == USD:
        spent = f"{_dollars(budget.microusd_per_month or 0)} a month"
        asks = f"this request reserves {_dollars(cost.microusd)}"
    else:
        limit = budget.tokens_per_day if outcome == DAY else budget.tokens_per_month
        spent = f"{limit} tokens a {'day' if outcome == DAY else 'month'}"
        asks = f"this request reserves {cost.total}"
    return LimitExceeded(
        f"budget_{outcome}",
        f"Budget reached: the {budget.label} budget of {spent} is spent ({asks}).",
        retry_after=retry_after,
    )


def _refusal(quota: Quota, outcome: str, retry_after: int, cost: TokenEstimate) -> LimitExceeded:
    if outcome == IN_FLIGHT:
        message = f"Too many requests in flight: at most {quota.max_in_flight} at once."
    elif outcome == RPM:
        message = f"Rate limit reached: {quota.requests_per_minute} requests per minute."
    else:
        message = (
            f"Rate limit reached: {quota.tokens_per_minute} tokens per minute "
            f"(this request reserves {cost.total})."
        )
    return LimitExceeded(outcome, message, retry_after=retry_after)


async def reserve(stores: LimitStores, quota: Quota, cost: TokenEstimate) -> Reservation:
    """Reserve one request of `cost` against `quota` in `stores`; raise LimitExceeded when one refuses it."""
    if not quota.limited:
        return Reservation(quota, cost)
    tokens = cost.total if quota.tokens_per_minute or quota.budgets else 0
    money = cost.microusd if quota.counts_money else 0
    if quota.tokens_per_minute and tokens > quota.tokens_per_minute:
        instruments.record_refusal(subject=quota.subject, model=cost.model, reason=TOO_LARGE)
        raise _too_large(quota, cost)
    flight_id = uuid.uuid4().hex if quota.max_in_flight else ""
    store = stores.store()
    try:
        admission = await store.reserve(quota, tokens, flight_id, money)
    except (redis.RedisError, OSError):  # the store logged it; count this portal's share meanwhile
        store = stores.fallback()
        admission = await store.reserve(quota, tokens, flight_id, money)
    if admission.outcome != OK:
        instruments.record_refusal(subject=quota.subject, model=cost.model, reason=admission.outcome)
        if admission.outcome in (DAY, MONTH, USD):
            raise _budget_refusal(quota, admission.outcome, admission.budget, admission.retry_after, cost)
        raise _refusal(quota, admission.outcome, admission.retry_after, cost)
    return Reservation(
        quota,
        cost,
        window=admission.window,
        tokens=tokens,
        flight_id=flight_id,
        store=store,
        day=admission.day,
        month=admission.month,
        money=money,
    )
