"""The /v1 views in-process (Django's async test client) against a fake upstream.

These cover authentication, permissions, limits and error shapes quickly;
tests/api/test_live.py runs the same API in a real daphne with real workers.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError
from django.test import AsyncClient
from django.utils import timezone

from fleet.models import Deployment
from registry.models import ApiKey, ServedModel
from registry.services import keys
from registry.services.cache import forget_all
from tests.gateway.conftest import add_worker, chat_result, chunk, sse

pytestmark = pytest.mark.django_db(transaction=True)
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def _no_key_cache():
    forget_all()
    yield
    forget_all()


async def make_key(**kwargs) -> str:
    _, secret = await sync_to_async(keys.create_api_key)(name="t", **kwargs)
    return secret


async def post(path: str, body: object, secret: str | None, **extra: Any) -> Any:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return await AsyncClient().post(
        path, data=data, content_type="application/json", headers=headers, **extra
    )


def error_of(response) -> dict:
    body = json.loads(response.content)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


async def test_missing_key_is_401_in_openai_shape(served_model):
    response = await post("/v1/chat/completions", CHAT, None)
    assert response.status_code == 401
    assert error_of(response)["code"] == "missing_api_key"


async def test_invalid_revoked_and_expired_keys_are_401(served_model):
    assert (await post("/v1/chat/completions", CHAT, "sk-nope-nope")).status_code == 401
    secret = await make_key()
    key = await ApiKey.objects.aget(prefix=secret.split("-")[1])
    key.revoked_at = timezone.now()  # as the admin's revoke action does
    await key.asave(update_fields=["revoked_at"])
    response = await post("/v1/chat/completions", CHAT, secret)
    assert (response.status_code, error_of(response)["code"]) == (401, "revoked_api_key")
    expired = await make_key(expires_in_days=1)
    await ApiKey.objects.filter(prefix=expired.split("-")[1]).aupdate(
        expires_at=timezone.now() - timedelta(1)
    )
    forget_all()
    response = await post("/v1/chat/completions", CHAT, expired)
    assert (response.status_code, error_of(response)["code"]) == (401, "expired_api_key")


async def test_key_limited_to_other_models_is_403(served_model):
    await ServedModel.objects.acreate(name="other")
    secret = await make_key(model_names=["other"])
    response = await post("/v1/chat/completions", CHAT, secret)
    assert (response.status_code, error_of(response)["param"]) == (403, "model")


async def test_unknown_model_is_404_and_bad_field_is_400_naming_it(served_model):
    secret = await make_key()
    response = await post("/v1/chat/completions", {**CHAT, "model": "ghost"}, secret)
    assert (response.status_code, error_of(response)["code"]) == (404, "model_not_found")
    response = await post("/v1/chat/completions", {**CHAT, "temperature": "hot"}, secret)
    assert (response.status_code, error_of(response)["param"]) == (400, "temperature")
    response = await post("/v1/chat/completions", "{not json", secret)
    assert response.status_code == 400


async def test_body_too_large_is_413(served_model, settings):
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    secret = await make_key()
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    response = await post("/v1/chat/completions", big, secret)
    assert (response.status_code, error_of(response)["code"]) == (413, "request_too_large")


async def test_no_worker_is_503_with_retry_after(served_model):
    secret = await make_key()
    response = await post("/v1/chat/completions", CHAT, secret)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    error_of(response)


async def test_requests_per_minute_limit_is_429(served_model, upstream):
    await sync_to_async(add_worker)(served_model, "w1")
    upstream(lambda r: httpx2.Response(200, json=chat_result()))
    secret = await make_key(requests_per_minute=2)
    codes = [(await post("/v1/chat/completions", CHAT, secret)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


async def test_stream_is_server_sent_events_ending_with_done(served_model, upstream):
    await sync_to_async(add_worker)(served_model, "w1")
    body = sse(chunk("a"), chunk(None, {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}))
    upstream(lambda r: httpx2.Response(200, content=body))
    secret = await make_key()
    response = await post("/v1/chat/completions", {**CHAT, "stream": True}, secret)
    assert response["Content-Type"] == "text/event-stream"
    events = b"".join([part async for part in response.streaming_content]).split(b"\n\n")
    assert events[0].startswith(b"data: ")
    assert b'"a"' in events[0]
    assert events[-2] == b"data: [DONE]"
    assert b"prompt_tokens" not in b"".join(events)


async def test_models_lists_online_models_with_aliases(served_model):
    await sync_to_async(add_worker)(served_model, "w1")
    await ServedModel.objects.acreate(name="offline-model")
    secret = await make_key()
    response = await AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
    ids = sorted(m["id"] for m in json.loads(response.content)["data"])
    assert ids == ["tiny", "tiny-alias"]


async def test_models_lists_a_cold_elastic_model_that_starts_on_a_request(served_model):
    await ServedModel.objects.acreate(name="cold-model")
    await ServedModel.objects.acreate(name="fixed-offline")
    await Deployment.objects.acreate(name="cold-model", model_path="canned", min_replicas=0, max_replicas=2)
    await Deployment.objects.acreate(name="stopped", model_path="canned", min_replicas=0, max_replicas=0)
    await Deployment.objects.acreate(name="fixed-offline", model_path="canned", replicas=0)
    secret = await make_key()
    response = await AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
    ids = sorted(m["id"] for m in json.loads(response.content)["data"])
    assert ids == ["cold-model"]


async def test_unknown_v1_path_is_404_in_openai_shape(served_model):
    response = await AsyncClient().get("/v1/nothing")
    assert response.status_code == 404
    error_of(response)


async def test_an_unreachable_database_is_503_with_retry_after_not_500(served_model, monkeypatch):
    secret = await make_key()

    async def away(key: object) -> None:
        raise OperationalError("connection refused")

    forget_all()  # the key is not known yet: its lookup needs the database
    monkeypatch.setattr(keys._cache, "_load", away)
    response = await post("/v1/chat/completions", CHAT, secret)
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert error_of(response)["code"] == "database_unavailable"
