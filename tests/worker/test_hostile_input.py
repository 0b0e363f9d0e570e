"""The worker refuses hostile or oversized input with a 400 naming the field, and asks for its token.

In-process over the canned engine (a named fake): these are checks made
before any model runs. The same poisons against the real model, mixed into a
running batch, are in test_poisoned_requests.py.
"""

from __future__ import annotations

import httpx2
import pytest

from inference.worker import wire
from tests.worker.conftest import MakeClient
from tests.worker.test_http_api import CHAT, assert_openai_error

COMPLETION = {"model": "canned", "prompt": "a", "max_tokens": 2}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**COMPLETION, "seed": 2**64}, "seed"),
        ({**COMPLETION, "seed": -1}, "seed"),
        ({**COMPLETION, "stop": ["x"] * 1000}, "stop"),
        ({**COMPLETION, "stop": ["x" * 10_000]}, "stop"),
        ({**COMPLETION, "stop_token_ids": list(range(10_000))}, "stop_token_ids"),
        ({**COMPLETION, "max_tokens": 10**30}, "max_tokens"),
        ({**COMPLETION, "presence_penalty": 10**400}, "presence_penalty"),
        ({**COMPLETION, "model": "m" * 257}, "model"),
        ({**COMPLETION, "prompt": "word " * 20_000}, "prompt"),
        ({**CHAT, "messages": [{"role": "user", "content": "x" * 70_000}]}, "messages"),
        ({**CHAT, "messages": [{"role": "user", "content": ""}] * 3000}, "messages"),
    ],
)
async def test_out_of_bounds_values_are_a_400_naming_the_field(
    client: httpx2.AsyncClient, body: dict, param: str
) -> None:
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    assert_openai_error(await client.post(path, json=body), 400, param)


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b'{"model": "canned", "prompt": "a", "temperature": NaN}', "temperature"),
        (b'{"model": "canned", "prompt": "a", "top_p": -Infinity}', "top_p"),
        (b'{"model": "canned", "prompt": "a", "top_p": 1e400}', "top_p"),
        (b'{"model": "canned", "prompt": "\\ud800"}', "prompt"),
        (b"[" * 100_000 + b"]" * 100_000, None),
        (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, None),
    ],
)
async def test_non_finite_numbers_lone_surrogates_and_deep_nesting_are_a_400(
    client: httpx2.AsyncClient, content: bytes, param: str | None
) -> None:
    error = assert_openai_error(await client.post("/v1/completions", content=content), 400, param)
    assert error["param"] == param


@pytest.mark.parametrize("role", [[], {}, ["user"], 5, "x" * 10_000])
async def test_a_role_that_is_not_a_role_name_is_a_400(client: httpx2.AsyncClient, role: object) -> None:
    body = {**CHAT, "messages": [{"role": role, "content": "hi"}]}
    error = assert_openai_error(await client.post("/v1/chat/completions", json=body), 400)
    assert error["param"] == "messages[0].role"
    assert len(error["message"]) < 200  # the value is quoted, not echoed whole


async def test_an_error_quoting_a_lone_surrogate_is_still_json(client: httpx2.AsyncClient) -> None:
    tools = b'"tools": [{"type": "function", "function": {"name": "f"}}]'
    choice = b'"tool_choice": {"type": "function", "function": {"name": "\\ud800"}}'
    body = (
        b'{"model": "canned", "messages": [{"role": "user", "content": "a"}], '
        + tools
        + b", "
        + choice
        + b"}"
    )
    response = await client.post("/v1/chat/completions", content=body)
    error = assert_openai_error(response, 400)
    assert error["param"] == "tool_choice"


async def test_near_zero_temperature_is_served_greedily(client: httpx2.AsyncClient) -> None:
    response = await client.post("/v1/completions", json={**COMPLETION, "temperature": 1e-40})
    assert response.status_code == 200, response.text


async def test_a_body_past_the_cap_is_a_413(client: httpx2.AsyncClient, monkeypatch) -> None:
    monkeypatch.setattr(wire, "MAX_BODY_BYTES", 1000)
    body = {**COMPLETION, "prompt": "a" * 2000}
    assert_openai_error(await client.post("/v1/completions", json=body), 413)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "canned", "input": ["a"] * 2049}, "2048"),
        ({"model": "canned", "input": "x" * 70_000}, "too long"),
        ('{"model": "canned", "input": ["ok", "\\ud800"]}', "Unicode"),
    ],
)
async def test_embedding_inputs_are_bounded_in_count_and_length(
    make_client: MakeClient, body: dict | str, message: str
) -> None:
    client = make_client(task="embed")
    sent = {"content": body} if isinstance(body, str) else {"json": body}
    error = assert_openai_error(await client.post("/v1/embeddings", **sent), 400, "input")
    assert message in error["message"]


@pytest.mark.parametrize("request_id", [b"a" * 65, b"a b", b"../abort", "é".encode(), b""])
async def test_malformed_request_ids_are_a_400(client: httpx2.AsyncClient, request_id: bytes) -> None:
    response = await client.post("/v1/completions", json=COMPLETION, headers={b"X-Request-Id": request_id})
    assert_openai_error(response, 400, "X-Request-Id")


async def test_portal_style_request_ids_are_accepted(client: httpx2.AsyncClient) -> None:
    request_id = "req_01J.9:ab-" + "x" * 51
    response = await client.post("/v1/completions", json=COMPLETION, headers={"X-Request-Id": request_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "Bearer s3cret-extra", "Basic s3cret", "s3cret", "Bearer "]
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/completions"), ("GET", "/v1/models"), ("GET", "/status"), ("POST", "/abort/r1")],
)
async def test_every_route_but_health_needs_the_worker_token(
    make_client: MakeClient, authorization: str | None, method: str, path: str
) -> None:
    client = make_client(token="s3cret")
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = await client.request(method, path, json=COMPLETION, headers=headers)
    error = assert_openai_error(response, 401)
    assert error["code"] == "invalid_worker_token"
    assert "s3cret" not in response.text


async def test_the_worker_token_opens_every_route_and_health_needs_none(make_client: MakeClient) -> None:
    client = make_client(token="s3cret")
    good = {"Authorization": "Bearer s3cret"}
    assert (await client.get("/health")).status_code == 200
    assert (await client.post("/v1/completions", json=COMPLETION, headers=good)).status_code == 200
    assert (await client.get("/status", headers={"Authorization": "bearer s3cret"})).status_code == 200
    assert (await client.post("/abort/nope", headers=good)).status_code == 404


async def test_a_rotation_accepts_the_new_and_the_fallback_token_only(make_client: MakeClient) -> None:
    client = make_client(token="new-token", token_fallbacks=("old-token",))
    for token, status in [("new-token", 200), ("old-token", 200), ("older-token", 401), ("", 401)]:
        response = await client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == status, token


async def test_without_a_token_the_worker_is_open(client: httpx2.AsyncClient) -> None:
    assert (await client.post("/v1/completions", json=COMPLETION)).status_code == 200
