"""Request bodies: the shared parser is the one validator; the OpenAPI schema agrees with it.

Each bad body gets a 400 in OpenAI's shape naming the field, and the request
schema that /api/schema/ publishes for the endpoint refuses it too, so the
documentation does not promise what the API refuses (or the reverse).
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import jsonschema
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from registry.models import ModelTask, ServedModel
from tests.api.test_views import CHAT, error_of, make_key, post
from tests.gateway.conftest import add_worker, chat_result

pytestmark = pytest.mark.django_db(transaction=True)
EMBED = {"model": "tiny", "input": "hello"}
COMPLETE = {"model": "tiny", "prompt": "Once"}

BAD: list[tuple[str, dict[str, Any], str]] = [
    ("chat/completions", {**CHAT, "temperature": 3}, "temperature"),
    ("chat/completions", {**CHAT, "top_p": "high"}, "top_p"),
    ("chat/completions", {**CHAT, "n": 17}, "n"),
    ("chat/completions", {**CHAT, "max_tokens": 0}, "max_tokens"),
    ("chat/completions", {**CHAT, "presence_penalty": 5}, "presence_penalty"),
    ("chat/completions", {**CHAT, "stop_token_ids": [-1]}, "stop_token_ids"),
    ("chat/completions", {**CHAT, "stream_options": "yes"}, "stream_options"),
    ("chat/completions", {**CHAT, "messages": []}, "messages"),
    ("chat/completions", {**CHAT, "messages": ["hi"]}, "messages[0]"),
    ("chat/completions", {**CHAT, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ("chat/completions", {"messages": CHAT["messages"]}, "model"),
    ("completions", {**COMPLETE, "min_p": 2}, "min_p"),
    ("completions", {"model": "tiny"}, "prompt"),
    ("embeddings", {"model": "tiny"}, "input"),
    ("embeddings", {**EMBED, "encoding_format": "hex"}, "encoding_format"),
]


async def published_schema(endpoint: str) -> dict[str, Any]:
    """The request body schema /api/schema/ publishes for `/v1/<endpoint>`."""
    response = await AsyncClient().get("/api/schema/", {"format": "json"})
    document = json.loads(response.content)
    operation = document["paths"][f"/v1/{endpoint}"]["post"]
    return operation["requestBody"]["content"]["application/json"]["schema"]


def schema_accepts(schema: dict[str, Any], body: dict[str, Any]) -> bool:
    # OpenAPI 3.0 schema objects are JSON Schema draft 4 with a few keywords of its own.
    return jsonschema.Draft4Validator(schema).is_valid(body)


@pytest.fixture
async def embedding_model(served_model):
    return await ServedModel.objects.acreate(name="mini", task=ModelTask.EMBED)


@pytest.mark.parametrize(("endpoint", "body", "param"), BAD, ids=[f"{e}:{p}" for e, _, p in BAD])
async def test_bad_body_is_400_naming_the_field_and_the_schema_refuses_it_too(
    served_model, embedding_model, endpoint, body, param
):
    if endpoint == "embeddings" and "model" in body:
        body = {**body, "model": embedding_model.name}
    response = await post(f"/v1/{endpoint}", body, await make_key())
    assert response.status_code == 400, response.content
    assert error_of(response)["param"] == param
    assert not schema_accepts(await published_schema(endpoint), body)


async def test_strict_types_where_the_serializer_would_coerce(served_model):
    # DRF turns "yes" into True and 5 into "5"; the API does not guess.
    secret = await make_key()
    for field, value in (("stream", "yes"), ("user", 5)):
        response = await post("/v1/chat/completions", {**CHAT, field: value}, secret)
        assert (response.status_code, error_of(response)["param"]) == (400, field)


async def test_a_full_valid_body_passes_both(served_model, upstream):
    await sync_to_async(add_worker)(served_model, "w1")
    upstream(lambda r: httpx2.Response(200, json=chat_result()))
    body = {
        **CHAT,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
        "temperature": 0.5,
        "top_p": 0.9,
        "n": 2,
        "max_tokens": 8,
        "stop": ["\n"],
        "seed": 1,
        "top_k": 20,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "ignore_eos": False,
        "stop_token_ids": [2],
        "user": "someone",
        "max_completion_tokens": 8,
        "metadata": {"team": "search"},
        "parallel_tool_calls": True,
        "response_format": {"type": "text"},
    }
    assert schema_accepts(await published_schema("chat/completions"), body)
    response = await post("/v1/chat/completions", body, await make_key())
    assert response.status_code == 200, response.content
