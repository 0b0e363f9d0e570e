"""The chat page's websocket: stream answers, stop them, fight arena battles, take votes.

Client → server messages: `chat.send`, `chat.retry`, `chat.stop`, `arena.send`,
`arena.stop`, `arena.vote`, `models.list`. Server → client: `models.list`,
`chat.started`, `chat.token`, `chat.done`, `chat.error`, `arena.started`,
`arena.token`, `arena.done`, `arena.finished`, `arena.revealed`, `arena.error`.
Each handler is named after its message type (`chat.send` → `chat_send`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from portal.chat import selectors, services
from portal.chat.answers import Answer
from portal.chat.owners import Owner, owner_for
from portal.chat.services import ChatError
from portal.chat.streaming import clean_params, stream_answer
from portal.gateway import relay
from registry.models import ModelTask, ServedModel

logger = logging.getLogger(__name__)

HANDLED_TYPES = frozenset(
    {"chat.send", "chat.retry", "chat.stop", "arena.send", "arena.stop", "arena.vote", "models.list"}
)
# Code the browser sees when the socket is refused for want of a login.
UNAUTHENTICATED_CLOSE_CODE = 4401
SIDES = ("a", "b")


async def available_models() -> list[str]:
    """Return the names of generation models that have an online worker, via the relay."""
    models = await relay.list_models()
    embedders = await database_sync_to_async(_embedding_model_names)()
    return sorted({str(m["id"]) for m in models if str(m.get("root") or m["id"]) not in embedders})


def _embedding_model_names() -> set[str]:
    return set(ServedModel.objects.filter(task=ModelTask.EMBED).values_list("name", flat=True))


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

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        if kind not in HANDLED_TYPES:
            await self.send_json({"type": "error", "message": f"Unknown message type {kind!r}."})
            return
        try:
            await getattr(self, kind.replace(".", "_"))(content)
        except ChatError as exc:
            prefix = kind.split(".")[0]
            await self.send_json({"type": f"{prefix}.error", "message": exc.message, "code": exc.code})

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
        model = str(content.get("model") or "")
        if not model:
            raise ChatError("Pick a model first.", code="no_model")
        params = clean_params(content.get("params"))
        system_prompt = str(content.get("system_prompt") or "")
        conversation_id = _optional_int(content.get("conversation_id"))
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
                content=str(content.get("content") or ""),
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
        model_a, model_b = str(content.get("model_a") or ""), str(content.get("model_b") or "")
        if anonymous and not (model_a and model_b):
            model_a, model_b = await _random_pair()
        params = clean_params(content.get("params"))
        prompt = str(content.get("prompt") or "")
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
        battle_id = _optional_int(content.get("battle_id"))
        if battle_id is None:
            raise ChatError("Say which battle the vote is for.", code="invalid_vote")
        battle = await database_sync_to_async(services.record_vote)(
            owner=self.owner, battle_id=battle_id, choice=str(content.get("choice") or "")
        )
        await self.send_json(
            {
                "type": "arena.revealed",
                "battle_id": battle.pk,
                "choice": content.get("choice"),
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


def _optional_int(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ChatError("Expected a number.", code="invalid_request") from None


async def _random_pair() -> tuple[str, str]:
    """Pick two different models for an anonymous battle."""
    models = await available_models()
    if len(models) < 2:
        raise ChatError("The arena needs two models with an online worker.", code="not_enough_models")
    model_a, model_b = random.sample(models, 2)
    return model_a, model_b
