"""What the OpenAPI schema promises about methods and bodies, in-process.

Every 405 names the allowed methods (RFC 9110), OPTIONS lists them without
a key, and the `/v1` bodies are required and closed in /api/schema/. The
full contract is fuzzed against a live portal in tests/malformed/test_schema_fuzz.py.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from inference.errors import InvalidRequest
from inference.protocol import parse_chat, parse_completion, parse_embedding
from registry.services import keys

pytestmark = pytest.mark.django_db(transaction=True)


async def schema() -> dict[str, Any]:
    response = await AsyncClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return json.loads(response.content)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("get", "/v1/chat/completions", "POST, OPTIONS"),
        ("put", "/v1/completions", "POST, OPTIONS"),
        ("delete", "/v1/embeddings", "POST, OPTIONS"),
        ("post", "/v1/models", "GET, HEAD, OPTIONS"),
        ("get", "/api/echo", "POST"),  # the signed API
        ("post", "/api/schema/", "GET, HEAD, OPTIONS"),
    ],
)
async def test_every_405_says_which_methods_are_allowed(method, path, allowed):
    _, secret = await sync_to_async(keys.create_api_key)(name="t")
    client = AsyncClient(headers={"Authorization": f"Bearer {secret}"})
    response = await getattr(client, method)(path)
    assert response.status_code == 405
    assert response["Allow"] == allowed
    if path.startswith("/v1/"):
        assert json.loads(response.content)["error"]["code"] == "method_not_allowed"


async def test_options_lists_the_methods_without_a_key():
    response = await AsyncClient().options("/v1/chat/completions")
    assert response.status_code == 204
    assert response["Allow"] == "POST, OPTIONS"
    assert response.content == b""


async def test_v1_bodies_are_required_closed_and_nullable_where_optional():
    paths = (await schema())["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        body = paths[path]["post"]["requestBody"]
        assert body["required"] is True
        content = body["content"]["application/json"]["schema"]
        assert content["additionalProperties"] is False
        assert "model" in content["required"]
        assert "nullable" not in content["properties"]["model"]
        assert content["properties"]["user"]["nullable"] is True
    embedding = paths["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert embedding["properties"]["encoding_format"]["enum"] == ["float", "base64", None]


async def test_a_generation_answers_json_or_an_event_stream_and_declares_its_errors():
    responses = (await schema())["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"400", "401", "403", "404", "413", "429", "503", "504"} <= set(responses)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"structured_outputs": {"jsn": None}}, "structured_outputs.jsn"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "description": 5}}},
            "response_format.json_schema.description",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]}, "tools[0].function"),
        ({"messages": [{"role": "user", "content": "hi", "name": "n" * 257}]}, "messages[0].name"),
        ({"model": "a\x07"}, "model"),
    ],
)
async def test_the_parser_and_the_schema_refuse_the_same_body(extra, field):
    valid = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body = {**valid, **extra}
    with pytest.raises(InvalidRequest) as refused:
        parse_chat(body, strict=False)
    assert refused.value.field == field
    published = (await schema())["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    validator = jsonschema.Draft4Validator(published["content"]["application/json"]["schema"])
    assert not validator.is_valid(body)
    assert validator.is_valid(valid)


def test_a_null_schema_in_response_format_reads_as_absent_as_the_schema_says():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    format_ = {"type": "json_schema", "json_schema": {"name": "a", "schema": None, "strict": None}}
    guide = parse_chat({**body, "response_format": format_}, strict=True).params.guide
    assert guide is not None
    assert json.loads(guide.spec) == {}


async def test_every_v1_operation_has_a_summary_and_examples_the_parser_and_the_schema_accept():
    paths = (await schema())["paths"]
    parsers = {
        "/v1/chat/completions": parse_chat,
        "/v1/completions": parse_completion,
        "/v1/embeddings": parse_embedding,
    }
    for path, operations in paths.items():
        if path.startswith("/v1/"):
            assert all(operation.get("summary") for operation in operations.values()), path
    for path, parse in parsers.items():
        content = paths[path]["post"]["requestBody"]["content"]["application/json"]
        validator = jsonschema.Draft4Validator(content["schema"])
        examples = [example["value"] for example in content["examples"].values()]
        assert examples, path
        for body in examples:
            assert validator.is_valid(body), (path, body)
            parse(body, strict=True)  # refused with InvalidRequest otherwise
    chat = paths["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    formats = [example["value"].get("response_format", {}) for example in chat["examples"].values()]
    assert {"type": "json_schema"}.items() <= max(formats, key=len).items()
