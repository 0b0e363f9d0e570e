"""A key's limits and scope through the /v1 views, and bodies that must be a 400, never a 500."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from portal.gateway.gateway import current
from portal.gateway.tasks import drain
from registry.models import ApiKey, ModelTask, ServedModel
from registry.services import keys
from registry.services.cache import forget_all
from tests.api.test_views import CHAT, error_of, make_key, post
from tests.gateway.conftest import add_worker, chat_result, chunk, sse
from tests.limit_fixtures import clear_of_a_minute_edge, tokens_counted

pytestmark = pytest.mark.django_db(transaction=True)
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
STREAM = {**CHAT, "stream": True, "max_tokens": 60}  # reserves 82 (the prompt's bound) + 60
EMBEDDING = {"model": "mini", "input": "!" * 240}  # 242 tokens for MiniLM; its bound is 244


@pytest.fixture(autouse=True)
def _one_minute() -> None:
    clear_of_a_minute_edge()  # a per-minute refusal must fall in the minute its counts are in


@pytest.fixture(autouse=True)
def _no_key_cache():
    forget_all()
    yield
    forget_all()


@pytest.fixture
async def worker(served_model, upstream) -> list[httpx2.Request]:
    await sync_to_async(add_worker)(served_model, "w1")

    def answer(request: httpx2.Request) -> httpx2.Response:
        if json.loads(request.content).get("stream"):
            return httpx2.Response(200, content=sse(chunk("a"), chunk(None, USAGE)))
        return httpx2.Response(200, json=chat_result())

    return upstream(answer)


async def finish(response: Any) -> None:
    """Read a streamed response to its end, then let its bookkeeping settle."""
    assert [part async for part in response.streaming_content]
    await drain()


async def key_id(secret: str) -> int:
    return (await ApiKey.objects.aget(prefix=secret.split("-")[1])).id


async def test_a_stream_in_progress_holds_its_token_reservation(worker):
    secret = await make_key(tokens_per_minute=200)
    first = await post("/v1/chat/completions", STREAM, secret)
    assert first.status_code == 200
    second = await post("/v1/chat/completions", STREAM, secret)
    assert second.status_code == 429
    assert error_of(second)["code"] == "rate_limit_exceeded"
    assert 0 < int(second.headers["Retry-After"]) <= 61
    await finish(first)
    assert tokens_counted(f"key:{await key_id(secret)}") == 5  # the real usage replaced 142
    assert (await post("/v1/chat/completions", STREAM, secret)).status_code == 200


async def test_max_tokens_beyond_the_keys_tokens_per_minute_is_refused_naming_it(worker):
    secret = await make_key(tokens_per_minute=100)
    response = await post("/v1/chat/completions", {**CHAT, "max_tokens": 500}, secret)
    assert response.status_code == 429
    error = error_of(response)
    assert (error["param"], error["code"]) == ("max_tokens", "request_exceeds_limit")
    assert "max_tokens" in error["message"]
    assert "Retry-After" not in response.headers
    assert not worker


@pytest.fixture
async def embedder(upstream) -> list[httpx2.Request]:
    model = await ServedModel.objects.acreate(name="mini", task=ModelTask.EMBED)
    await sync_to_async(add_worker)(model, "e1")
    vector = {"object": "embedding", "index": 0, "embedding": [0.5]}
    usage = {"prompt_tokens": 242, "total_tokens": 242}  # MiniLM's count of EMBEDDING
    answer = {"object": "list", "model": "mini", "data": [vector], "usage": usage}
    return upstream(lambda request: httpx2.Response(200, json=answer))


async def test_an_input_that_may_cost_more_than_the_keys_tokens_per_minute_is_refused_before_dispatch(
    embedder,
):
    secret = await make_key(tokens_per_minute=100)
    response = await post("/v1/embeddings", EMBEDDING, secret)
    assert response.status_code == 429
    error = error_of(response)
    assert (error["param"], error["code"]) == ("input", "request_exceeds_limit")
    assert "up to 244" in error["message"]
    assert "Retry-After" not in response.headers
    assert not embedder  # no worker was asked
    assert tokens_counted(f"key:{await key_id(secret)}") == 0


async def test_an_input_within_the_limit_is_counted_with_the_workers_usage(embedder):
    secret = await make_key(tokens_per_minute=300)
    assert (await post("/v1/embeddings", EMBEDDING, secret)).status_code == 200
    await drain()
    assert tokens_counted(f"key:{await key_id(secret)}") == 242  # reserved 244, settled with 242
    refused = await post("/v1/embeddings", EMBEDDING, secret)  # 242 + 244 > 300
    assert (refused.status_code, error_of(refused)["code"]) == (429, "rate_limit_exceeded")


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


DEEP_TOOL = {"type": "function", "function": {"name": "f", "parameters": nested(900)}}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "tiny", "prompt": nested(900)}),
        ("/v1/embeddings", {"model": "tiny", "input": [nested(900)]}),
        ("/v1/chat/completions", {**CHAT, "tools": [DEEP_TOOL] * 100}),  # ~3 GB if written indented
    ],
    ids=["deep-prompt", "deep-input", "deep-tools"],
)
async def test_a_body_too_deep_to_count_is_refused_with_a_4xx_not_a_500(worker, path, body):
    secret = await make_key(tokens_per_minute=1_000_000)
    response = await post(path, body, secret)
    assert response.status_code in (400, 429), response.content
    assert not worker


async def test_requests_in_flight_are_limited_and_freed_when_they_end(worker):
    secret = await make_key(max_in_flight=1)
    first = await post("/v1/chat/completions", STREAM, secret)
    refused = await post("/v1/chat/completions", CHAT, secret)
    assert (first.status_code, refused.status_code) == (200, 429)
    assert "in flight" in error_of(refused)["message"]
    await finish(first)
    assert (await post("/v1/chat/completions", CHAT, secret)).status_code == 200


async def test_a_refused_request_frees_its_in_flight_slot(worker):
    secret = await make_key(max_in_flight=1)
    assert (await post("/v1/chat/completions", {**CHAT, "temperature": 9}, secret)).status_code == 400
    assert (await post("/v1/chat/completions", {**CHAT, "model": "ghost"}, secret)).status_code == 404
    await drain()
    assert current().limits.memory.in_flight(f"key:{await key_id(secret)}") == 0
    assert (await post("/v1/chat/completions", CHAT, secret)).status_code == 200


async def test_the_client_request_id_is_only_a_label(worker):
    secret = await make_key()
    response = await AsyncClient().post(
        "/v1/chat/completions",
        data=json.dumps(CHAT),
        content_type="application/json",
        headers={"Authorization": f"Bearer {secret}", "X-Request-Id": "../../abort/victim"},
    )
    assert response.status_code == 200
    sent = worker[0].headers["X-Request-Id"]
    assert sent != "../../abort/victim"
    assert len(sent) == 32
    assert response.headers["X-Request-Id"] == sent
    assert response.headers["X-Client-Request-Id"] == "../../abort/victim"


async def test_a_key_for_no_model_may_use_none(worker):
    key, secret = await sync_to_async(keys.create_api_key)(name="nothing", all_models=False)
    assert not key.all_models
    response = await post("/v1/chat/completions", CHAT, secret)
    assert (response.status_code, error_of(response)["param"]) == (403, "model")


async def test_deleting_a_keys_only_model_never_widens_it(worker, served_model):
    other = await ServedModel.objects.acreate(name="other")
    secret = await make_key(model_names=["other"])
    await other.adelete()
    forget_all()
    forget_all()
    response = await post("/v1/chat/completions", CHAT, secret)
    assert response.status_code == 403
    listed = await AsyncClient().get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert json.loads(listed.content)["data"] == []


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}', "not valid JSON"),
        (b'{"model": "tiny", "temperature": NaN}', "not valid JSON"),
        (b'{"model": "tiny", "n": Infinity}', "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
    ],
)
async def test_a_body_that_is_not_plain_json_is_a_400(worker, raw, why):
    secret = await make_key()
    response = await post("/v1/chat/completions", raw, secret)
    assert response.status_code == 400
    assert why in error_of(response)["message"]


async def test_a_model_name_of_any_length_is_a_400_naming_model(worker):
    secret = await make_key()
    response = await post("/v1/chat/completions", {**CHAT, "model": "x" * 5000}, secret)
    assert (response.status_code, error_of(response)["param"]) == (400, "model")
