"""The chat page's websocket: stream answers, stop them, fight arena battles, take votes.

Client → server messages: `chat.send`, `chat.retry`, `chat.stop`, `arena.send`,
`arena.stop`, `arena.vote`, `models.list`. Server → client: `models.list`,
`chat.started`, `chat.token`, `chat.done`, `chat.error`, `arena.started`,
`arena.token`, `arena.done`, `arena.finished`, `arena.revealed`, `arena.error`.
Each handler is named after its message type (`chat.send` → `chat_send`).
A malformed message (not JSON, a field of the wrong type, an id that is not
an integer) is answered with an error on this socket only; nothing a client
sends ends the consumer. An error names the offending field in `param` when
there is one (the page's `params` are checked by the shared parser, `body.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from portal.chat import selectors, services
from portal.chat.answers import Answer
from portal.chat.body import page_params
from portal.chat.owners import Owner, owner_for
from portal.chat.services import ChatError
from portal.chat.streaming import stream_answer
from portal.gateway.gateway import current
from registry.models import ModelTask

logger = logging.getLogger(__name__)

HANDLED_TYPES = frozenset(
    {"chat.send", "chat.retry", "chat.stop", "arena.send", "arena.stop", "arena.vote", "models.list"}
)
# Code the browser sees when the socket is refused for want of a login.
UNAUTHENTICATED_CLOSE_CODE = 4401
SIDES = ("a", "b")
MAX_ID = 2**63 - 1  # a database id (bigint)


async def available_models() -> list[str]:
    """Return the names (aliases included) of generation models that have an online worker."""
    rows = await current().list_models()
    return sorted({name for row in rows if row["task"] != ModelTask.EMBED for name in _names(row)})


def _names(row: dict[str, Any]) -> list[str]:
    return [row["name"], *row["aliases"]]


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """One browser tab: at most one chat answer and one arena battle in flight."""

    owner: Owner
    tasks: dict[str, asyncio.Task[None]]
    stops: dict[str, asyncio.Event]

    async def connect(self) -> None:
        session = self.scope.get("session")
        owner = owner_for(self.scope.get("user"), getattr(session, "session_key", None))
        if owner is None:
            await self.close(code=UNAUTHENTICATED_CLOSE_CODE)
            return
        self.owner = owner
        self.tasks = {}
        self.stops = {}
        await self.accept()
        await self.models_list({})

    async def disconnect(self, code: int) -> None:
        """Stop what is in flight; each task still saves its partial answer."""
        for stop in getattr(self, "stops", {}).values():
            stop.set()
        tasks = list(getattr(self, "tasks", {}).values())
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        """Decode a text frame as JSON; anything else is refused on this socket, never raised."""
        if text_data is None:
            await self._refuse("Send messages as JSON text frames.")
            return
        try:
            content = await self.decode_json(text_data)
            if "\\ud" in text_data or "\\uD" in text_data:
                json.dumps(content, ensure_ascii=False).encode("utf-8")  # a lone surrogate fails here
        except (ValueError, RecursionError):  # UnicodeError included
            await self._refuse("The message is not valid JSON.")
            return
        await self.receive_json(content, **kwargs)

    async def _refuse(self, message: str) -> None:
        await self.send_json({"type": "error", "message": message, "code": "invalid_request"})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if not isinstance(kind, str) or kind not in HANDLED_TYPES:
            await self.send_json({"type": "error", "message": f"Unknown message type {repr(kind)[:80]}."})
            return
        prefix = kind.split(".")[0]
        try:
            await getattr(self, kind.replace(".", "_"))(content)
        except ChatError as exc:
            error = {"type": f"{prefix}.error", "message": exc.message, "code": exc.code}
            await self.send_json({**error, "param": exc.param} if exc.param else error)
        except Exception:
            # Our own bug, not the client's: this message fails, the socket stays open.
            logger.exception("chat message %s failed", kind)
            message = "That request failed; try again."
            await self.send_json({"type": f"{prefix}.error", "message": message, "code": "internal_error"})

    async def models_list(self, content: dict[str, Any]) -> None:
        try:
            models = await available_models()
        except Exception:
            logger.exception("listing models for the chat page failed")
            models = []
        await self.send_json({"type": "models.list", "models": models})

    # Chat

    def _busy(self, name: str) -> bool:
        task = self.tasks.get(name)
        return task is not None and not task.done()

    def _spawn(self, name: str, work: Any) -> None:
        self.stops[name] = asyncio.Event()
        self.tasks[name] = asyncio.create_task(work(self.stops[name]))

    async def chat_send(self, content: dict[str, Any]) -> None:
        await self._start_chat(content, retry=False)

    async def chat_retry(self, content: dict[str, Any]) -> None:
        await self._start_chat(content, retry=True)

    async def chat_stop(self, content: dict[str, Any]) -> None:
        if "chat" in self.stops:
            self.stops["chat"].set()

    async def _start_chat(self, content: dict[str, Any], *, retry: bool) -> None:
        if self._busy("chat"):
            raise ChatError("An answer is still streaming; stop it first.", code="busy")
        model = _text(content, "model")
        if not model:
            raise ChatError("Pick a model first.", code="no_model")
        params = page_params(content.get("params"))
        system_prompt = _text(content, "system_prompt")
        conversation_id = _optional_id(content, "conversation_id")
        if retry:
            if conversation_id is None:
                raise ChatError("There is nothing to retry.", code="nothing_to_retry")
            conversation, history = await database_sync_to_async(services.start_retry)(
                owner=self.owner,
                conversation_id=conversation_id,
                model_name=model,
                system_prompt=system_prompt,
                params=params,
            )
        else:
            conversation, history = await database_sync_to_async(services.start_turn)(
                owner=self.owner,
                conversation_id=conversation_id,
                model_name=model,
                content=_text(content, "content"),
                system_prompt=system_prompt,
                params=params,
            )
        await self.send_json(
            {"type": "chat.started", "conversation_id": conversation.pk, "title": conversation.title}
        )

        async def work(stop: asyncio.Event) -> None:
            await self._run_chat(conversation.pk, model, history, params, stop)

        self._spawn("chat", work)

    async def _run_chat(
        self,
        conversation_id: int,
        model: str,
        history: list[dict[str, str]],
        params: dict[str, Any],
        stop: asyncio.Event,
    ) -> None:
        async def emit(text: str) -> None:
            await self.send_json({"type": "chat.token", "text": text})

        answer = await stream_answer(
            model=model, messages=history, params=params, owner=self.owner, emit=emit, stop=stop
        )
        message = await database_sync_to_async(services.save_answer)(
            conversation_id=conversation_id, answer=answer
        )
        payload = {**selectors.message_payload(message), "retryable": answer.retryable}
        await self._send_quietly(
            {"type": "chat.done", "conversation_id": conversation_id, "message": payload}
        )

    async def _send_quietly(self, message: dict[str, Any]) -> None:
        """Send unless the socket is already gone (the answer is saved either way)."""
        try:
            await self.send_json(message)
        except Exception:
            logger.info("chat socket closed before %s could be sent", message.get("type"))

    # Arena

    async def arena_send(self, content: dict[str, Any]) -> None:
        if self._busy("arena"):
            raise ChatError("A battle is still streaming; stop it first.", code="busy")
        anonymous = bool(content.get("anonymous"))
        model_a, model_b = _text(content, "model_a"), _text(content, "model_b")
        if anonymous and not (model_a and model_b):
            model_a, model_b = await _random_pair()
        params = page_params(content.get("params"))
        prompt = _text(content, "prompt")
        battle = await database_sync_to_async(services.create_battle)(
            owner=self.owner, prompt=prompt, model_a=model_a, model_b=model_b, anonymous=anonymous
        )
        shown = {"model_a": None, "model_b": None} if anonymous else {"model_a": model_a, "model_b": model_b}
        await self.send_json(
            {"type": "arena.started", "battle_id": battle.pk, "anonymous": anonymous, **shown}
        )
        models = {"a": model_a, "b": model_b}
        messages = [{"role": "user", "content": prompt}]

        async def work(stop: asyncio.Event) -> None:
            await asyncio.gather(
                *(
                    self._run_side(battle.pk, side, models[side], messages, params, anonymous, stop)
                    for side in SIDES
                )
            )
            await self._send_quietly({"type": "arena.finished", "battle_id": battle.pk})

        self._spawn("arena", work)

    async def _run_side(
        self,
        battle_id: int,
        side: str,
        model: str,
        messages: list[dict[str, str]],
        params: dict[str, Any],
        anonymous: bool,
        stop: asyncio.Event,
    ) -> None:
        async def emit(text: str) -> None:
            await self.send_json({"type": "arena.token", "battle_id": battle_id, "side": side, "text": text})

        answer = await stream_answer(
            model=model, messages=messages, params=params, owner=self.owner, emit=emit, stop=stop
        )
        await database_sync_to_async(services.save_battle_answer)(
            battle_id=battle_id, side=side, answer=answer
        )
        await self._send_quietly(
            {"type": "arena.done", "battle_id": battle_id, "side": side, **_side_figures(answer, anonymous)}
        )

    async def arena_stop(self, content: dict[str, Any]) -> None:
        if "arena" in self.stops:
            self.stops["arena"].set()

    async def arena_vote(self, content: dict[str, Any]) -> None:
        battle_id = _optional_id(content, "battle_id")
        if battle_id is None:
            raise ChatError("Say which battle the vote is for.", code="invalid_vote")
        choice = _text(content, "choice")
        battle = await database_sync_to_async(services.record_vote)(
            owner=self.owner, battle_id=battle_id, choice=choice
        )
        await self.send_json(
            {
                "type": "arena.revealed",
                "battle_id": battle.pk,
                "choice": choice,
                "model_a": battle.model_a,
                "model_b": battle.model_b,
                "figures": battle.figures,
            }
        )


def _side_figures(answer: Answer, anonymous: bool) -> dict[str, Any]:
    """Return what the page may show about one side; anonymous battles hide who answered."""
    figures = answer.figures()
    if anonymous:
        figures["model_name"] = None
        figures["worker_identity"] = ""
    return figures


def _text(content: dict[str, Any], name: str) -> str:
    """The string field `name` ("" when absent); a field of another type is refused, naming it."""
    value = content.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ChatError(f"'{name}' must be a string.", code="invalid_request")
    return value


def _optional_id(content: dict[str, Any], name: str) -> int | None:
    """The id in field `name` (None when absent): a positive integer, or its decimal digits.

    NaN, Infinity, fractions, booleans and numbers past a database id are refused, naming the field.
    """
    value = content.get(name)
    if value is None or value == "":
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float):
        number = int(value) if value.is_integer() else None  # is_integer is false for NaN and inf
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        number = int(value)
    if number is None or not 0 < number <= MAX_ID:
        raise ChatError(f"'{name}' must be a positive integer.", code="invalid_request")
    return number


async def _random_pair() -> tuple[str, str]:
    """Pick two different models for an anonymous battle."""
    models = await available_models()
    if len(models) < 2:
        raise ChatError("The arena needs two models with an online worker.", code="not_enough_models")
    model_a, model_b = random.sample(models, 2)
    return model_a, model_b
