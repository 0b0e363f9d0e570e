"""Reads for the chat app: conversation lists and payloads, the arena leaderboard."""

from __future__ import annotations

from typing import Any

from portal.chat import elo
from portal.chat.models import ArenaVote, Conversation, Message
from portal.chat.owners import Owner


def list_conversations(*, owner: Owner, limit: int = 100) -> list[Conversation]:
    """Return the owner's conversations, most recently active first."""
    return list(Conversation.objects.filter(owner.filter()).order_by("-updated_at")[:limit])


def get_conversation(*, owner: Owner, conversation_id: int) -> Conversation | None:
    """Return one of the owner's conversations, or None (also for someone else's)."""
    return Conversation.objects.filter(owner.filter(), pk=conversation_id).first()


def message_payload(message: Message) -> dict[str, Any]:
    """Return a message as the page renders it."""
    return {
        "id": message.pk,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "answer_format": message.answer_format,
        "model_name": message.model_name,
        "worker_identity": message.worker_identity,
        "completion_tokens": message.completion_tokens,
        "time_to_first_token_ms": message.time_to_first_token_ms,
        "tokens_per_second": message.tokens_per_second,
        "error": message.error,
    }


def conversation_payload(conversation: Conversation) -> dict[str, Any]:
    """Return a conversation with its settings and messages, for resuming it on the page."""
    return {
        "id": conversation.pk,
        "title": conversation.title,
        "model_name": conversation.model_name,
        "system_prompt": conversation.system_prompt,
        "params": conversation.params,
        "messages": [message_payload(m) for m in conversation.messages.all()],
    }


def get_leaderboard() -> list[elo.Standing]:
    """Return models ranked by Elo over every vote, replayed in the order they were cast."""
    votes = ArenaVote.objects.select_related("battle").order_by("created_at", "id")
    return elo.rank((v.battle.model_a, v.battle.model_b, v.choice) for v in votes)
