"""Conversation and arena writes: ownership, history for the model, votes and the leaderboard."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from portal.chat import selectors, services
from portal.chat.answers import Answer
from portal.chat.models import ArenaVote, Conversation, Message
from portal.chat.owners import Owner
from portal.chat.services import ChatError

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner() -> Owner:
    return Owner(user_id=get_user_model().objects.create_user("ada", password="pw-123456").pk)


@pytest.fixture
def stranger() -> Owner:
    return Owner(user_id=get_user_model().objects.create_user("bob", password="pw-123456").pk)


def start(owner: Owner, content: str = "Hello there", conversation_id: int | None = None):
    return services.start_turn(
        owner=owner,
        conversation_id=conversation_id,
        model_name="m",
        content=content,
        system_prompt="Be brief.",
        params={"temperature": 0.2},
    )


def test_first_turn_creates_a_titled_conversation_and_history_with_system_prompt(owner):
    conversation, history = start(owner, "Explain   Elo\nratings please")
    assert conversation.title == "Explain Elo ratings please"
    assert history == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Explain   Elo\nratings please"},
    ]
    assert conversation.params == {"temperature": 0.2}


def test_history_keeps_stopped_answers_and_leaves_out_failed_ones(owner):
    conversation, _ = start(owner)
    services.save_answer(
        conversation_id=conversation.pk, answer=Answer(model_name="m", content="Partial", status="stopped")
    )
    _, history = start(owner, "Go on", conversation.pk)
    services.save_answer(
        conversation_id=conversation.pk, answer=Answer(model_name="m", status="error", error="boom")
    )
    _, history = services.start_retry(
        owner=owner, conversation_id=conversation.pk, model_name="m", system_prompt="", params={}
    )
    assert [m["content"] for m in history] == ["Hello there", "Partial", "Go on"]
    # Retrying drops the failed answer so the conversation reads cleanly on reload.
    assert not Message.objects.filter(status="error").exists()


def test_another_users_conversation_is_not_found(owner, stranger):
    conversation, _ = start(owner)
    with pytest.raises(ChatError) as info:
        start(stranger, "hi", conversation.pk)
    assert info.value.code == "not_found"
    with pytest.raises(ChatError):
        services.delete_conversation(owner=stranger, conversation_id=conversation.pk)
    assert selectors.list_conversations(owner=stranger) == []
    assert selectors.get_conversation(owner=stranger, conversation_id=conversation.pk) is None


def test_empty_message_is_refused(owner):
    with pytest.raises(ChatError) as info:
        start(owner, "   ")
    assert info.value.code == "empty_message"
    assert not Conversation.objects.exists()


def test_rename_trims_and_refuses_empty_titles(owner):
    conversation, _ = start(owner)
    renamed = services.rename_conversation(owner=owner, conversation_id=conversation.pk, title="  My  chat ")
    assert renamed.title == "My chat"
    with pytest.raises(ChatError):
        services.rename_conversation(owner=owner, conversation_id=conversation.pk, title="  ")


def test_anonymous_sessions_only_see_their_own_conversations():
    mine, theirs = Owner(session_key="s1"), Owner(session_key="s2")
    conversation, _ = start(mine)
    assert [c.pk for c in selectors.list_conversations(owner=mine)] == [conversation.pk]
    assert selectors.list_conversations(owner=theirs) == []


def test_vote_is_stored_once_and_feeds_the_leaderboard(owner, stranger):
    battle = services.create_battle(owner=owner, prompt="Hi", model_a="m1", model_b="m2", anonymous=True)
    services.save_battle_answer(battle_id=battle.pk, side="b", answer=Answer(model_name="m2", content="B!"))
    with pytest.raises(ChatError):
        services.record_vote(owner=stranger, battle_id=battle.pk, choice="a")
    services.record_vote(owner=owner, battle_id=battle.pk, choice="b")
    with pytest.raises(ChatError) as info:
        services.record_vote(owner=owner, battle_id=battle.pk, choice="a")
    assert info.value.code == "already_voted"
    assert ArenaVote.objects.get().choice == "b"
    battle.refresh_from_db()
    assert battle.answer_b == "B!"
    assert battle.figures["b"]["model_name"] == "m2"
    board = selectors.get_leaderboard()
    assert [(s.model, s.votes, s.wins) for s in board] == [("m2", 1, 1), ("m1", 1, 0)]


def test_battle_needs_two_different_models(owner):
    with pytest.raises(ChatError) as info:
        services.create_battle(owner=owner, prompt="Hi", model_a="m1", model_b="m1", anonymous=False)
    assert info.value.code == "invalid_models"
