"""Writes for the chat app: conversations, answers, arena battles and votes.

Each function is one logical step and one database transaction, so the consumer
calls each through a single `database_sync_to_async` hop.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from portal.chat.answers import Answer
from portal.chat.models import (
    AnswerStatus,
    ArenaBattle,
    ArenaVote,
    Conversation,
    Message,
    MessageRole,
    VoteChoice,
)
from portal.chat.owners import Owner

TITLE_LENGTH = 60


class ChatError(Exception):
    """A request the client got wrong (unknown conversation, empty prompt, double vote).

    `param` names the offending field when there is one, as OpenAI's errors do.
    """

    def __init__(self, message: str, *, code: str = "invalid_request", param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


def _title_from(content: str) -> str:
    first_line = " ".join(content.split())
    return first_line[:TITLE_LENGTH] + ("…" if len(first_line) > TITLE_LENGTH else "") or "New chat"


def _owned_conversation(owner: Owner, conversation_id: int) -> Conversation:
    conversation = Conversation.objects.filter(owner.filter(), pk=conversation_id).first()
    if conversation is None:
        raise ChatError("That conversation does not exist.", code="not_found")
    return conversation


def history_for_request(conversation: Conversation) -> list[dict[str, str]]:
    """Return the OpenAI `messages` for the next answer: system prompt, then usable turns.

    Failed answers are left out: the model should not see an error banner as its own words.
    """
    messages: list[dict[str, str]] = []
    if conversation.system_prompt.strip():
        messages.append({"role": "system", "content": conversation.system_prompt})
    for message in conversation.messages.all():
        unusable = message.status == AnswerStatus.ERROR or not message.content
        if message.role == MessageRole.ASSISTANT and unusable:
            continue
        messages.append({"role": message.role, "content": message.content})
    return messages


@transaction.atomic
def start_turn(
    *,
    owner: Owner,
    conversation_id: int | None,
    model_name: str,
    content: str,
    system_prompt: str,
    params: dict[str, Any],
) -> tuple[Conversation, list[dict[str, str]]]:
    """Append the user's message (creating the conversation if needed); return it and the history."""
    if not content.strip():
        raise ChatError("Type a message first.", code="empty_message")
    if conversation_id is None:
        conversation = Conversation.objects.create(title=_title_from(content), **owner.fields())
    else:
        conversation = _owned_conversation(owner, conversation_id)
    conversation.model_name = model_name
    conversation.system_prompt = system_prompt
    conversation.params = params
    conversation.save()
    Message.objects.create(conversation=conversation, role=MessageRole.USER, content=content)
    return conversation, history_for_request(conversation)


@transaction.atomic
def start_retry(
    *, owner: Owner, conversation_id: int, model_name: str, system_prompt: str, params: dict[str, Any]
) -> tuple[Conversation, list[dict[str, str]]]:
    """Drop the failed answers at the end of a conversation and return the history to answer again."""
    conversation = _owned_conversation(owner, conversation_id)
    last_user = conversation.messages.filter(role=MessageRole.USER).order_by("-created_at", "-id").first()
    if last_user is None:
        raise ChatError("There is nothing to retry.", code="nothing_to_retry")
    conversation.messages.filter(
        role=MessageRole.ASSISTANT, status=AnswerStatus.ERROR, id__gt=last_user.id
    ).delete()
    conversation.model_name = model_name
    conversation.system_prompt = system_prompt
    conversation.params = params
    conversation.save()
    return conversation, history_for_request(conversation)


def save_answer(*, conversation_id: int, answer: Answer) -> Message:
    """Store an assistant answer, partial or failed ones included, with its figures."""
    return Message.objects.create(
        conversation_id=conversation_id,
        role=MessageRole.ASSISTANT,
        content=answer.content,
        status=answer.status,
        answer_format=answer.answer_format,
        model_name=answer.model_name,
        worker_identity=answer.worker_identity,
        request_id=answer.request_id,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        time_to_first_token_ms=answer.time_to_first_token_ms,
        tokens_per_second=answer.tokens_per_second,
        error=answer.error,
    )


def rename_conversation(*, owner: Owner, conversation_id: int, title: str) -> Conversation:
    """Give a conversation a new title (trimmed; an empty title is refused)."""
    title = " ".join(title.split())[:200]
    if not title:
        raise ChatError("A title cannot be empty.", code="empty_title")
    conversation = _owned_conversation(owner, conversation_id)
    conversation.title = title
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


def delete_conversation(*, owner: Owner, conversation_id: int) -> None:
    """Delete a conversation and its messages."""
    _owned_conversation(owner, conversation_id).delete()


def create_battle(*, owner: Owner, prompt: str, model_a: str, model_b: str, anonymous: bool) -> ArenaBattle:
    """Record a new arena battle before its answers stream."""
    if not prompt.strip():
        raise ChatError("Type a prompt first.", code="empty_message")
    if not model_a or not model_b or model_a == model_b:
        raise ChatError("Pick two different models.", code="invalid_models")
    return ArenaBattle.objects.create(
        prompt=prompt, model_a=model_a, model_b=model_b, anonymous=anonymous, **owner.fields()
    )


def save_battle_answer(*, battle_id: int, side: str, answer: Answer) -> None:
    """Store one side's answer and figures; the two sides finish independently."""
    with transaction.atomic():
        battle = ArenaBattle.objects.select_for_update().get(pk=battle_id)
        setattr(battle, f"answer_{side}", answer.content)
        battle.figures = {**battle.figures, side: answer.figures()}
        battle.save(update_fields=[f"answer_{side}", "figures"])


def record_vote(*, owner: Owner, battle_id: int, choice: str) -> ArenaBattle:
    """Store the verdict on a battle the owner fought; a battle takes one vote only."""
    if choice not in VoteChoice.values:
        raise ChatError("Vote a, b, tie or both_bad.", code="invalid_vote")
    with transaction.atomic():
        battle = ArenaBattle.objects.filter(owner.filter(), pk=battle_id).select_for_update().first()
        if battle is None:
            raise ChatError("That battle does not exist.", code="not_found")
        if ArenaVote.objects.filter(battle=battle).exists():
            raise ChatError("This battle already has a vote.", code="already_voted")
        ArenaVote.objects.create(battle=battle, choice=choice)
    return battle
