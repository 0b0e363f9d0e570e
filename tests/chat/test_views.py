"""The chat pages and conversation endpoints over HTTP."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from portal.chat import services
from portal.chat.models import Conversation
from portal.chat.owners import Owner

pytestmark = pytest.mark.django_db


@pytest.fixture
def user():
    return get_user_model().objects.create_user("ada", password="pw-123456")


@pytest.fixture
def logged_in(client: Client, user) -> Client:
    client.force_login(user)
    return client


def conversation_of(user, title: str = "Hello") -> Conversation:
    conversation, _ = services.start_turn(
        owner=Owner(user_id=user.pk),
        conversation_id=None,
        model_name="m",
        content=title,
        system_prompt="",
        params={},
    )
    return conversation


def test_anonymous_visitor_is_sent_to_login(client):
    response = client.get("/chat/")
    assert response.status_code == 302
    assert response["Location"].startswith("/chat/login/?next=/chat/")


def test_demo_mode_lets_anonymous_visitors_chat(client, settings):
    settings.CHAT_ALLOW_ANONYMOUS = True
    response = client.get("/chat/")
    assert response.status_code == 200
    assert client.session.session_key


def test_page_lists_own_conversations_and_resumes_one(logged_in, user):
    conversation = conversation_of(user, "About <b>tags</b>")
    page = logged_in.get("/chat/").content.decode()
    assert "About &lt;b&gt;tags&lt;/b&gt;" in page
    resumed = logged_in.get(f"/chat/c/{conversation.pk}/")
    assert resumed.status_code == 200
    assert resumed.context["current"]["messages"][0]["content"] == "About <b>tags</b>"


def test_someone_elses_conversation_is_404(logged_in):
    other = get_user_model().objects.create_user("bob", password="pw-123456")
    conversation = conversation_of(other)
    assert logged_in.get(f"/chat/c/{conversation.pk}/").status_code == 404
    response = logged_in.post(f"/chat/api/conversations/{conversation.pk}/delete/")
    assert response.status_code == 404
    assert Conversation.objects.filter(pk=conversation.pk).exists()


def test_rename_and_delete_through_the_json_endpoints(logged_in, user):
    conversation = conversation_of(user)
    url = f"/chat/api/conversations/{conversation.pk}/rename/"
    response = logged_in.post(url, json.dumps({"title": "Renamed"}), content_type="application/json")
    assert response.json() == {"id": conversation.pk, "title": "Renamed"}
    for bad_body in ("not json", "[" * 100_000 + "]" * 100_000, '{"title": ["a"]}', '{"title": 1e999}'):
        bad = logged_in.post(url, bad_body, content_type="application/json")
        assert bad.status_code == 400, bad_body[:20]
    listed = logged_in.get("/chat/api/conversations/").json()["conversations"]
    assert [c["title"] for c in listed] == ["Renamed"]
    assert logged_in.post(f"/chat/api/conversations/{conversation.pk}/delete/").status_code == 200
    assert not Conversation.objects.exists()


def test_endpoints_refuse_anonymous_callers_with_401(client):
    assert client.get("/chat/api/conversations/").status_code == 401


def test_leaderboard_ranks_models_by_votes(client, user):
    owner = Owner(user_id=user.pk)
    for winner in ("a", "a", "tie"):
        battle = services.create_battle(
            owner=owner, prompt="p", model_a="alpha", model_b="beta", anonymous=True
        )
        services.record_vote(owner=owner, battle_id=battle.pk, choice=winner)
    response = client.get("/leaderboard/")
    assert response.status_code == 200
    standings = response.context["standings"]
    assert [(s.model, s.votes) for s in standings] == [("alpha", 3), ("beta", 3)]
    assert "alpha" in response.content.decode()


def test_arena_page_renders_for_a_logged_in_user(logged_in):
    response = logged_in.get("/chat/arena/")
    assert response.status_code == 200
    assert b"Both are bad" in response.content
