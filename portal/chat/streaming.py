"""Stream one answer through the gateway and measure it.

The chat page uses the same gateway as the REST API (dispatch, failover, usage
record, abort on the worker); this module only turns its chunks into text for
the page and figures for the answer. Stopping races the next chunk against a
stop event, so a stop is honoured even while the worker is silent.

Chat users have limits too, off by default: CHAT_USER_RPM, CHAT_USER_TPM and
CHAT_USER_MAX_IN_FLIGHT, reserved per answer before it starts (an arena
battle is two answers) through the limiter every door shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from portal.chat.answers import Answer
from portal.chat.body import answer_format, request_body
from portal.chat.owners import Owner
from portal.gateway.caller import Caller, new_request_id
from portal.gateway.errors import GatewayError
from portal.gateway.figures import count
from portal.gateway.gateway import current
from portal.gateway.limits import LimitExceeded, Quota
from portal.gateway.prepare import CHAT
from portal.gateway.streaming import ChatStream
from registry.services.cache import RefreshingCache
from teams.budgets import MemberTeam, aget_member_team

logger = logging.getLogger(__name__)

Emit = Callable[[str], Awaitable[None]]


def chat_quota(owner: Owner, team: MemberTeam | None = None) -> Quota:
    """One chat user's (or anonymous session's) limits from settings (0: off), and their team's budgets."""
    who = f"user:{owner.user_id}" if owner.user_id is not None else f"session:{owner.session_key}"
    return Quota(
        subject=f"chat-{who}",
        requests_per_minute=settings.CHAT_USER_RPM,
        tokens_per_minute=settings.CHAT_USER_TPM,
        max_in_flight=settings.CHAT_USER_MAX_IN_FLIGHT,
        budgets=team.budgets if team is not None else (),
    )


async def _load_member_team(user_id: Hashable) -> MemberTeam:
    return await aget_member_team(user_id=int(str(user_id)))


# A user's team, cached like keys (an admin change reaches it through the registry version).
_teams: RefreshingCache[MemberTeam] = RefreshingCache(
    _load_member_team,
    ttl=lambda: settings.API_KEY_CACHE_SECONDS,
    max_stale=lambda: 3 * settings.API_KEY_CACHE_SECONDS,
    max_entries=10_000,
)


async def chat_caller(owner: Owner) -> Caller:
    """The chat door's caller: the user's limits, and the team whose budget and models they use."""
    team = MemberTeam() if owner.user_id is None else await _teams.get(owner.user_id)
    return Caller(
        source="chat",
        user_id=owner.user_id,
        team_id=team.team_id,
        quota=chat_quota(owner, team),
        allowed_model_ids=team.allowed_model_ids,
        log_days=team.log_days,
    )


async def _next_or_stop(chunks: AsyncIterator[dict[str, Any]], stop: asyncio.Event) -> dict[str, Any] | None:
    """Return the next chunk, or None when the stream ended or `stop` was set first."""
    following = asyncio.ensure_future(anext(chunks))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if following.done():
        try:
            return following.result()
        except StopAsyncIteration:
            return None
    following.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        await following
    return None


def _fail(answer: Answer, *, message: str, code: str, status_code: int) -> None:
    answer.status = "error"
    answer.error = message
    answer.error_code = code
    # Busy or absent workers and worker failures may pass; a bad request will not.
    answer.retryable = status_code >= 500 or status_code == 429


def _finish_figures(answer: Answer, stream: Any, *, pieces: int, first_at: float | None, end: float) -> None:
    usage = getattr(stream, "usage", None)
    usage = usage if isinstance(usage, dict) else {}
    answer.worker_identity = str(getattr(stream, "worker_identity", None) or "")
    answer.request_id = str(getattr(stream, "request_id", "") or "")
    # Figures the page shows: counts only, whatever an upstream sent (never text or markup).
    answer.prompt_tokens = count(usage["prompt_tokens"]) if "prompt_tokens" in usage else None
    answer.completion_tokens = count(usage.get("completion_tokens")) or pieces or None
    ttft = getattr(stream, "time_to_first_token_ms", None)
    answer.time_to_first_token_ms = ttft
    tokens = answer.completion_tokens or 0
    if first_at is not None and tokens > 1 and end > first_at:
        # Decode speed: tokens after the first over the time they took.
        answer.tokens_per_second = round((tokens - 1) / (end - first_at), 2)


@dataclass
class _Progress:
    pieces: int = 0
    first_at: float | None = None


async def _relay_chunks(
    chunks: AsyncIterator[dict[str, Any]],
    *,
    answer: Answer,
    progress: _Progress,
    emit: Emit,
    stop: asyncio.Event,
) -> None:
    """Emit each chunk's text until the stream ends, an error chunk arrives or `stop` is set."""
    while (chunk := await _next_or_stop(chunks, stop)) is not None:
        if "error" in chunk:
            error = chunk["error"] or {}
            message = str(error.get("message") or "The worker failed.")
            _fail(answer, message=message, code=str(error.get("code") or "worker_failed"), status_code=502)
            return
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content") or ""
            if text:
                progress.first_at = progress.first_at or time.monotonic()
                progress.pieces += 1
                answer.content += text
                await emit(text)
    if stop.is_set():
        answer.status = "stopped"


async def stream_answer(
    *,
    model: str,
    messages: list[dict[str, str]],
    params: dict[str, Any],
    owner: Owner,
    emit: Emit,
    stop: asyncio.Event,
) -> Answer:
    """Stream one answer to `emit`; return it complete, stopped (partial) or failed.

    `params` are the page's fields as `body.page_params` checked them.

    Never raises for a gateway or worker failure: the page shows it inline.
    """
    answer = Answer(model_name=model, answer_format=answer_format(params))
    body = request_body(model=model, messages=messages, params=params)
    gateway, request_id = current(), new_request_id()
    started = time.monotonic()
    progress = _Progress()
    stream: ChatStream | None = None
    try:
        caller = await chat_caller(owner)
        prepared = await gateway.admit(CHAT, caller, body, stream=True, request_id=request_id)
        stream = await gateway.stream(prepared)
        await _relay_chunks(aiter(stream), answer=answer, progress=progress, emit=emit, stop=stop)
    except LimitExceeded as exc:
        # Waiting helps (429, retryable) unless the answer alone exceeds the limit.
        status = 429 if exc.retry_after is not None else 400
        _fail(answer, message=exc.message, code="rate_limited", status_code=status)
        return answer
    except GatewayError as exc:
        _fail(answer, message=exc.message, code=str(exc.code or exc.error_type), status_code=exc.status_code)
    except Exception:
        # Whatever broke, the page must show an error rather than wait forever.
        logger.exception("chat stream failed for model %s", model)
        _fail(answer, message="The answer failed unexpectedly.", code="internal_error", status_code=502)
    finally:
        if stream is not None:
            await stream.aclose()  # aborts the request on the worker when it has not finished
    first_at = progress.first_at
    _finish_figures(answer, stream, pieces=progress.pieces, first_at=first_at, end=time.monotonic())
    answer.request_id = request_id
    if answer.time_to_first_token_ms is None and first_at is not None:
        answer.time_to_first_token_ms = round((first_at - started) * 1000, 1)
    logger.info(
        "chat answer %s model=%s status=%s tokens=%s",
        answer.request_id,
        model,
        answer.status,
        answer.completion_tokens,
    )
    return answer
