"""An app's limits on the signed API: reserved before its pipeline runs, settled with the real usage."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx2
import pytest
from asgiref.sync import sync_to_async

from portal.gateway.gateway import current
from portal.gateway.tasks import drain
from registry.models import AppCredential
from tests.gateway.conftest import add_worker, chat_result, served_model, upstream
from tests.limit_fixtures import clear_of_a_minute_edge, tokens_counted
from tests.signed.conftest import App, post

__all__ = ["served_model", "upstream"]
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _one_minute() -> None:
    clear_of_a_minute_edge()  # a per-minute refusal must fall in the minute its counts are in


@pytest.fixture(autouse=True)
def _pipelines(settings) -> None:
    settings.SIGNED_PIPELINES = [
        "portal.signed.pipelines.chat.ChatPipeline",
        "tests.signed.fake_pipelines.SleepPipeline",
    ]


@pytest.fixture(autouse=True)
async def _usage_written() -> AsyncIterator[None]:
    yield
    await drain()
    await current().usage.flush()


async def limit(app: App, **limits: int) -> None:
    await AppCredential.objects.filter(pk=app.credential_id).aupdate(**limits)


async def test_requests_beyond_the_apps_max_in_flight_are_9807(app: App) -> None:
    await limit(app, max_in_flight=1)
    replies = await asyncio.gather(*(post("sleep", app.body({"seconds": 0.5, "i": i})) for i in range(2)))
    assert sorted(r["code"] for r in replies) == [0, 9807]
    refused = next(r for r in replies if r["code"] == 9807)
    assert "in flight" in refused["data"]["msg"]
    await drain()
    assert (await post("sleep", app.body({"i": 3})))["code"] == 0


async def test_a_chat_asking_more_than_the_apps_tokens_per_minute_is_9807_naming_max_tokens(app: App) -> None:
    await limit(app, tokens_per_minute=100)
    reply = await post("chat", app.body({"model": "tiny", "prompt": "hi", "max_tokens": 500}))
    assert reply["code"] == 9807
    assert "max_tokens" in reply["data"]["msg"]


async def test_a_chat_is_counted_with_its_real_usage(app: App, served_model, upstream) -> None:
    await sync_to_async(add_worker)(served_model, "w1")
    upstream(lambda r: httpx2.Response(200, json=chat_result()))
    await limit(app, tokens_per_minute=200)
    reply = await post("chat", app.body({"model": "tiny", "prompt": "hi", "max_tokens": 60}))
    assert reply["code"] == 0
    await drain()
    assert tokens_counted(f"app:{app.credential_id}") == 5  # chat_result's usage, not the 142 reserved
