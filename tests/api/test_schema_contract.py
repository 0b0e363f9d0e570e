"""What the API promises about methods, in-process: every 405 names the allowed ones, as RFC 9110 asks."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from registry.services import keys

pytestmark = pytest.mark.django_db(transaction=True)


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
