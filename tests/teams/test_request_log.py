"""The opt-in request log through the OpenAI API, in-process against a fake upstream (the model does
not matter here): off by default and then nothing is built or kept; on for a key or its team, the
request's JSON and the answer's text (a stream's assembled) are kept beside the usage record, never a
key; pruned after their days; searchable under the usage page's scope; warned about in the admin."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx2
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from portal.chat.owners import Owner
from portal.chat.streaming import chat_caller
from portal.gateway.caller import Caller
from portal.gateway.gateway import current
from portal.gateway.tasks import drain
from registry import tasks
from registry.models import ApiKey, ModelTask, RequestLog, ServedModel, UsageRecord
from registry.services.credentials import aget_credential, create_app_credential
from registry.services.keys import aauthenticate_secret, create_api_key
from teams.models import Team
from tests.api.test_views import post
from tests.gateway.conftest import add_worker, chat_result, chunk, served_model, sse, upstream
from tests.limit_fixtures import use_store
from tests.teams.test_team_usage import staff

__all__ = ["served_model", "upstream"]
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "where is the parrot?"}], "max_tokens": 5}
ANSWER = "The parrot is in the cage."


@pytest.fixture(params=["memory", "redis"])
async def buffered_in(request: pytest.FixtureRequest, settings) -> AsyncIterator[str]:
    """Usage entries (and the logs riding on them) through this process's memory, or the Redis stream."""
    use_store(request, settings)
    settings.USAGE_FLUSH_SECONDS = 0.05
    yield request.param
    # The stream's writer ends with the test: one left to the loop's closing can outlive it (a cancel
    # inside a Redis read comes back as a timeout, which the writer retries).
    await current().close()


def logged_key(*, days: int | None = 3, team: Team | None = None) -> str:
    key, secret = create_api_key(name="logged", team=team)
    ApiKey.objects.filter(pk=key.pk).update(log_requests=days is not None, request_log_days=days)
    return secret


async def logs_of(response) -> list[RequestLog]:
    assert response.status_code == 200, response.content
    if hasattr(response, "streaming_content"):
        b"".join([part async for part in response.streaming_content])
    await drain()  # the request's background tasks (its key's last use) end with the test
    await current().usage.flush()
    return [log async for log in RequestLog.objects.select_related("usage_record")]


@pytest.mark.django_db(transaction=True)
async def test_without_a_switch_nothing_is_built_or_kept(served_model, upstream):
    await sync_to_async(add_worker)(served_model, "w1")
    upstream(lambda r: httpx2.Response(200, json=chat_result(text=ANSWER)))
    _, secret = await sync_to_async(create_api_key)(name="plain")
    key = await aauthenticate_secret(secret)
    caller = Caller(api_key_id=key.id, log_days=key.log_days)
    prepared = await current().admit("chat/completions", caller, dict(CHAT))
    assert prepared.ticket.log is None  # the hot path's whole cost when off: this attribute
    prepared.ticket.finish()
    assert await logs_of(await post("/v1/chat/completions", CHAT, secret)) == []
    assert await UsageRecord.objects.acount() == 2


@pytest.mark.django_db(transaction=True)
async def test_a_keys_log_keeps_the_request_and_the_answer_and_never_a_key(
    served_model, upstream, buffered_in
):
    await sync_to_async(add_worker)(served_model, "w1")
    upstream(lambda r: httpx2.Response(200, json=chat_result(text=ANSWER)))
    secret = await sync_to_async(logged_key)(days=3)
    body = {**CHAT, "api_key": "sk-pasted-by-mistake"}
    (log,) = await logs_of(await post("/v1/chat/completions", body, secret))
    assert json.loads(log.request_body)["messages"] == CHAT["messages"]
    assert json.loads(log.request_body)["api_key"] == "[not kept]"
    assert log.response_text == ANSWER
    stored = log.request_body + log.response_text
    assert secret not in stored
    assert "sk-pasted" not in stored
    assert "Bearer" not in stored
    assert log.usage_record.request_id
    assert log.usage_record.prompt_tokens == 3
    assert log.expires_at - log.usage_record.created_at == timedelta(days=3)


@pytest.mark.django_db(transaction=True)
async def test_a_streams_answer_is_assembled_from_its_chunks(served_model, upstream, buffered_in):
    await sync_to_async(add_worker)(served_model, "w1")
    usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    events = sse(chunk("The parrot "), chunk("is in "), chunk("the cage."), chunk(usage=usage))
    upstream(lambda r: httpx2.Response(200, content=events))
    secret = await sync_to_async(logged_key)()
    (log,) = await logs_of(await post("/v1/chat/completions", {**CHAT, "stream": True}, secret))
    assert log.response_text == ANSWER
    assert log.usage_record.streamed
    assert log.usage_record.completion_tokens == 3


@pytest.mark.django_db(transaction=True)
async def test_completions_and_embeddings_are_logged_without_the_vectors(served_model, upstream):
    embedder = await ServedModel.objects.acreate(name="embedder", task=ModelTask.EMBED)
    await sync_to_async(add_worker)(served_model, "w1")
    await sync_to_async(add_worker)(embedder, "w2")

    def answer(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/embeddings"):
            vectors = [{"object": "embedding", "index": i, "embedding": [0.125] * 8} for i in range(2)]
            return httpx2.Response(200, json={"object": "list", "data": vectors, "model": "embedder"})
        choice = {"index": 0, "text": " in the cage", "finish_reason": "stop"}
        return httpx2.Response(200, json={"object": "text_completion", "choices": [choice], "usage": None})

    upstream(answer)
    secret = await sync_to_async(logged_key)()
    await logs_of(await post("/v1/completions", {"model": "tiny", "prompt": "The parrot is"}, secret))
    embedded = {"model": "embedder", "input": ["parrot", "cage"]}
    logs = {
        log.usage_record.endpoint: log
        for log in await logs_of(await post("/v1/embeddings", embedded, secret))
    }
    assert logs["completions"].response_text == " in the cage"
    assert json.loads(logs["embeddings"].request_body)["input"] == ["parrot", "cage"]
    assert logs["embeddings"].response_text == "[2 embedding vector(s), not kept]"
    assert "0.125" not in logs["embeddings"].response_text


@pytest.mark.django_db(transaction=True)
async def test_a_teams_switch_logs_its_keys_chats_and_apps_for_the_longest_days(served_model, upstream):
    team = await Team.objects.acreate(name="logged-team", log_requests=True, request_log_days=30)
    await sync_to_async(add_worker)(served_model, "w1")
    upstream(lambda r: httpx2.Response(200, json=chat_result(text=ANSWER)))
    secret = await sync_to_async(logged_key)(days=None, team=team)  # the key's own switch is off
    (log,) = await logs_of(await post("/v1/chat/completions", CHAT, secret))
    assert log.expires_at - log.usage_record.created_at == timedelta(days=30)
    assert log.usage_record.team_id == team.id
    user = await get_user_model().objects.acreate(username="member")
    await team.members.aadd(user)
    assert (await chat_caller(Owner(user_id=user.id))).log_days == 30  # the chat page's door
    await sync_to_async(create_app_credential)(app_id="logged-app", team=team)
    snapshot = await aget_credential("logged-app")
    assert snapshot is not None
    assert snapshot.log_days == 30
    assert (await chat_caller(Owner(session_key="anonymous"))).log_days == 0


@pytest.mark.django_db
def test_the_hourly_job_deletes_logs_whose_days_are_over():
    now = timezone.now()
    for n, age in enumerate((1, 5)):
        record = UsageRecord.objects.create(request_id=f"r{n}", model_name="m")
        RequestLog.objects.create(
            usage_record=record,
            request_body="{}",
            response_text="x",
            expires_at=now + timedelta(days=3 - age),  # created `age` days ago, kept 3 days
        )
    assert "registry.tasks.prune_request_logs" in {func for _, func, _ in tasks.SCHEDULES}
    assert tasks.prune_request_logs() == 1  # the one 5 days old, kept 3 days
    assert list(RequestLog.objects.values_list("usage_record__request_id", flat=True)) == ["r0"]
    assert UsageRecord.objects.count() == 2  # the usage records stay


def _search_rows() -> dict[str, Team]:
    teams = {name: Team.objects.create(name=name, log_requests=True) for name in ("blue", "red")}
    for name, team in teams.items():
        record = UsageRecord.objects.create(request_id=f"{name}-req", model_name="m", team=team)
        RequestLog.objects.create(
            usage_record=record,
            request_body=json.dumps({"messages": [{"role": "user", "content": f"{name} parrot"}]}),
            response_text=f"The {name} parrot sleeps.",
            expires_at=timezone.now() + timedelta(days=1),
        )
    return teams


def _found(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [log.usage_record.request_id for log in response.context["results"]]


@pytest.mark.django_db
def test_the_search_finds_text_in_either_body_under_the_usage_pages_scope():
    teams = _search_rows()
    url = reverse("console:usage:log")
    everyone = staff(usage_permission=True, username="platform")
    assert sorted(_found(everyone.get(url, {"q": "PARROT"}))) == ["blue-req", "red-req"]
    assert _found(everyone.get(url, {"q": "red parrot sleeps"})) == ["red-req"]
    assert _found(everyone.get(url, {"q": "blue-req"})) == ["blue-req"]  # a request id
    assert _found(everyone.get(url, {"q": "parrot", "team": "red"})) == ["red-req"]
    member = staff(usage_permission=True, team=teams["blue"], username="blue-viewer")
    assert _found(member.get(url, {"q": "red"})) == []  # another team's bodies stay hidden
    assert _found(member.get(url, {"q": "parrot"})) == ["blue-req"]
    assert member.get(url, {"team": "red"}).status_code == 403
    assert staff(usage_permission=False, username="nobody").get(url).status_code == 403
    page = everyone.get(reverse("console:usage:index")).content.decode()
    assert 'id="request-log"' in page  # the usage page links to the search


@pytest.mark.django_db
def test_the_admin_warns_where_a_log_is_on(admin_client):
    team = Team.objects.create(name="quiet")
    key, _ = create_api_key(name="chatty")
    assert (
        "request log of this"
        not in admin_client.get(reverse("admin:teams_team_change", args=[team.pk])).content.decode()
    )
    Team.objects.filter(pk=team.pk).update(log_requests=True, request_log_days=14)
    page = admin_client.get(reverse("admin:teams_team_change", args=[team.pk])).content.decode()
    assert "The request log of this team is on" in page
    assert "14 day(s)" in page
    form = {"name": "chatty", "all_models": "on", "queue_priority": "0", "log_requests": "on"}
    saved = admin_client.post(reverse("admin:registry_apikey_change", args=[key.pk]), form, follow=True)
    assert "The request log of this API key is on" in saved.content.decode()
    assert "7 day(s)" in saved.content.decode()  # the days left empty: the default
    listed = admin_client.get(reverse("admin:registry_apikey_changelist")).content.decode()
    assert "⚠ on, 7 day(s)" in listed


@pytest.mark.django_db
def test_a_usage_records_page_links_to_its_logged_bodies(admin_client):
    _search_rows()
    record = UsageRecord.objects.get(request_id="blue-req")
    page = admin_client.get(reverse("admin:registry_usagerecord_change", args=[record.pk])).content.decode()
    assert "Its request and answer" in page
    link = page.split('href="/admin/console/usage/log/?', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert _found(admin_client.get(reverse("console:usage:log") + "?" + link)) == ["blue-req"]
    bare = UsageRecord.objects.create(request_id="unlogged", model_name="m")
    page = admin_client.get(reverse("admin:registry_usagerecord_change", args=[bare.pk])).content.decode()
    assert "Not kept" in page
