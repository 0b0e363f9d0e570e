"""Limits that hold: every request is reserved against its caller's quota before dispatch, settled after.

The three doors (the OpenAI API, the signed API, the chat page) build a
`Quota` for their caller (a key, an app, a chat user) and call `reserve`
before any work starts. A reservation counts one request in this minute,
one request in flight and, against tokens per minute, the most the request
can cost: its estimated prompt plus n × max_tokens (`estimate`). Concurrent
requests therefore cannot all pass a check that only one of them fits: the
reservation is the check. When the request ends, `Reservation.settle(used)`
frees its in-flight slot and replaces the reserved tokens by the real ones
(the relay's Ticket does it for every path, a client's disconnect included).

A request whose reservation alone exceeds the tokens-per-minute limit is
refused outright (it could never pass), naming max_tokens. The counts live in
this process without REDIS_URL and in Redis with it (`limit_stores`). If Redis
cannot be reached, requests pass uncounted and a warning is logged: like the
usual gateways' fail-open default, an outage of the counter is not an outage
of the API.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from inference.sampling import DEFAULT_MAX_TOKENS
from portal.gateway.limit_stores import IN_FLIGHT, OK, RPM, TOO_LARGE, Quota, limit_store
from portal.gateway.tasks import spawn
from portal.metrics import instruments
from registry.services.dispatch import aresolve_model, valid_model_name

__all__ = ["LimitExceeded", "Quota", "Reservation", "TokenEstimate", "aestimate", "estimate", "reserve"]

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and separators of the chat template
MAX_N = 16


class LimitExceeded(Exception):
    """A limit refuses the request: which one (`reason`), why, and when to retry (None: never)."""

    def __init__(self, reason: str, message: str, *, retry_after: int | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class TokenEstimate:
    """What a request may cost: `prompt` (estimated) + `completions` × `max_tokens`.

    `model` is the served model's name when the estimate used its defaults: a
    refusal is counted against it (never against a name a client made up).
    """

    prompt: int = 0
    completions: int = 0
    max_tokens: int = 0
    model: str = ""

    @property
    def total(self) -> int:
        return self.prompt + self.completions * self.max_tokens


def _text_length(value: Any) -> tuple[int, int]:
    """(characters, token ids) in a prompt, an input or a message's content."""
    if isinstance(value, str):
        return len(value), 0
    if not isinstance(value, list):
        return 0, 0
    chars = ids = 0
    for item in value:
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, int):
            ids += 1
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            chars += len(item["text"])  # a content part
    return chars, ids


def estimate_prompt_tokens(body: Any) -> int:
    """The prompt's tokens, estimated without a tokenizer: ceil(characters / 4) + 4 per chat message.

    Four characters per token is the usual figure for English with BPE
    vocabularies (other scripts take more tokens per character; the settled
    usage corrects the estimate); token ids in a prompt count one each.
    """
    if not isinstance(body, dict):
        return 0
    chars = ids = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                c, i = _text_length(message.get("content"))
                chars, ids = chars + c, ids + i + TOKENS_PER_MESSAGE
    for name in ("prompt", "input"):
        c, i = _text_length(body.get(name))
        chars, ids = chars + c, ids + i
    return math.ceil(chars / CHARS_PER_TOKEN) + ids


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def estimate(body: Any, defaults: Mapping[str, Any] | None = None) -> TokenEstimate:
    """The reservation for an OpenAI request body: prompt + n × max_tokens (per prompt).

    max_tokens falls back to `max_completion_tokens`, then the model's default
    (`defaults`), then inference.sampling.DEFAULT_MAX_TOKENS. A body without
    `messages` or `prompt` (embeddings, the echo pipeline) generates nothing.
    """
    prompt = estimate_prompt_tokens(body)
    if not isinstance(body, dict) or ("messages" not in body and "prompt" not in body):
        return TokenEstimate(prompt=prompt)
    max_tokens = (
        _positive_int(body.get("max_tokens"))
        or _positive_int(body.get("max_completion_tokens"))
        or _positive_int((defaults or {}).get("max_tokens"))
        or DEFAULT_MAX_TOKENS
    )
    n = _positive_int(body.get("n")) or 1
    prompts = body.get("prompt")
    count = len(prompts) if isinstance(prompts, list) and all(isinstance(p, str) for p in prompts) else 1
    return TokenEstimate(prompt=prompt, completions=min(n, MAX_N) * max(count, 1), max_tokens=max_tokens)


async def aestimate(body: Any) -> TokenEstimate:
    """`estimate`, with the defaults of the model the body names (looked up through the model cache)."""
    name = body.get("model") if isinstance(body, dict) else None
    model = await aresolve_model(name=name) if isinstance(name, str) and valid_model_name(name) else None
    if model is None:
        return estimate(body)
    return replace(estimate(body, model.default_params), model=model.name)


@dataclass
class Reservation:
    """One request's hold on its quota until `settle`; the relay's Ticket settles it on every path."""

    quota: Quota
    estimate: TokenEstimate
    window: int = 0
    tokens: int = 0  # reserved against tokens per minute (0 when that limit is off)
    flight_id: str = ""  # its in-flight entry ("" when that limit is off)
    claimed: bool = field(default=False, repr=False)  # a Ticket owns the settling now
    settled: bool = field(default=False, repr=False)

    def settle(self, used_tokens: int) -> None:
        """Free the in-flight slot and count `used_tokens` instead of the reservation (once)."""
        if self.settled:
            return
        self.settled = True
        if self.tokens or self.flight_id:
            spawn(self._settle(max(0, used_tokens) if self.tokens else 0))

    async def _settle(self, used: int) -> None:
        try:
            await limit_store().settle(self.quota.subject, self.window, self.tokens, used, self.flight_id)
        except (redis.RedisError, OSError) as exc:
            logger.warning("limits: settling for %s failed: %s", self.quota.subject, exc)


def _refusal(quota: Quota, outcome: str, retry_after: int, cost: TokenEstimate) -> LimitExceeded:
    if outcome == TOO_LARGE:
        message = (
            f"This request may use {cost.total} tokens (about {cost.prompt} in the prompt plus "
            f"{cost.completions} × max_tokens {cost.max_tokens}), more than this caller's limit of "
            f"{quota.tokens_per_minute} tokens per minute: lower max_tokens."
        )
        return LimitExceeded(outcome, message, retry_after=None)
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


async def reserve(quota: Quota, cost: TokenEstimate) -> Reservation:
    """Reserve one request of `cost` against `quota`; raise LimitExceeded when a limit refuses it."""
    if not quota.limited:
        return Reservation(quota, cost)
    tokens = cost.total if quota.tokens_per_minute else 0
    flight_id = uuid.uuid4().hex if quota.max_in_flight else ""
    try:
        admission = await limit_store().reserve(quota, tokens, flight_id)
    except (redis.RedisError, OSError) as exc:
        logger.warning("limits: the store cannot be reached, %s passes uncounted: %s", quota.subject, exc)
        return Reservation(quota, cost)
    if admission.outcome != OK:
        instruments.record_refusal(subject=quota.subject, model=cost.model, reason=admission.outcome)
        raise _refusal(quota, admission.outcome, admission.retry_after, cost)
    return Reservation(quota, cost, window=admission.window, tokens=tokens, flight_id=flight_id)
