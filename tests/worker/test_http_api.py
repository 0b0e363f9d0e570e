"""The worker's OpenAI wire format, in-process over the canned engine (a named fake)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from typing import Any

import httpx2
import pytest

from tests.worker.conftest import MakeClient

CHAT = {"model": "canned", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}


def sse_events(text: str) -> list[Any]:
    """Parse an SSE body into JSON payloads (and the literal "[DONE]"); assert the framing."""
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def assert_openai_error(response: httpx2.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


async def test_chat_completion_returns_text_usage_and_a_chatcmpl_id(client: httpx2.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "The quick brown fox"}
    assert choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 4


async def test_completion_accepts_a_prompt_and_honours_stop(client: httpx2.AsyncClient) -> None:
    body = {"model": "canned", "prompt": "Once", "max_tokens": 10, "stop": ["fox"]}
    response = await client.post("/v1/completions", json=body)
    data = response.json()
    assert data["id"].startswith("cmpl-")
    assert data["choices"][0]["text"] == "The quick brown"
    assert data["choices"][0]["finish_reason"] == "stop"


async def test_n_above_one_returns_indexed_choices(client: httpx2.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={**CHAT, "n": 3})
    choices = response.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert response.json()["usage"]["completion_tokens"] == 12


async def test_stream_sends_role_deltas_finish_usage_and_done(client: httpx2.AsyncClient) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "The quick brown fox"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_stream_without_include_usage_has_no_usage_chunk(client: httpx2.AsyncClient) -> None:
    response = await client.post(
        "/v1/completions", json={"model": "canned", "prompt": "a", "max_tokens": 2, "stream": True}
    )
    chunks = sse_events(response.text)[:-1]
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "The quick"


async def test_stream_interval_groups_tokens_per_chunk(make_client: MakeClient) -> None:
    client = make_client(stream_interval=3)
    response = await client.post(
        "/v1/completions", json={"model": "canned", "prompt": "a", "max_tokens": 6, "stream": True}
    )
    texts = [c["choices"][0]["text"] for c in sse_events(response.text)[:-1]]
    assert texts[:2] == ["The quick brown", " fox jumps over"]


async def test_request_id_header_is_echoed(client: httpx2.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "abc-1"})
    assert response.headers["x-request-id"] == "abc-1"


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "model": "gpt-nope"}, 404, "model"),
        ("/v1/chat/completions", {**CHAT, "messages": []}, 400, "messages"),
        ("/v1/chat/completions", {**CHAT, "messages": "hi"}, 400, "messages"),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": 5}]},
            400,
            "messages[0].content",
        ),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": "ten"}, 400, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "temperature": 9}, 400, "temperature"),
        ("/v1/chat/completions", {**CHAT, "n": 0}, 400, "n"),
        ("/v1/chat/completions", {**CHAT, "stream": "yes"}, 400, "stream"),
        ("/v1/chat/completions", {"messages": CHAT["messages"]}, 400, "model"),
        ("/v1/completions", {"model": "canned", "prompt": 7}, 400, "prompt"),
        ("/v1/completions", {"model": "canned", "prompt": ""}, 400, "prompt"),
        ("/v1/embeddings", {"model": "canned", "input": [1, 2, 3]}, 400, "input"),
        ("/v1/embeddings", {"model": "canned", "input": []}, 400, "input"),
        (
            "/v1/embeddings",
            {"model": "canned", "input": "x", "encoding_format": "hex"},
            400,
            "encoding_format",
        ),
    ],
)
async def test_bad_input_is_a_4xx_in_openai_shape(
    client: httpx2.AsyncClient, path: str, body: dict, status: int, param: str
) -> None:
    assert_openai_error(await client.post(path, json=body), status, param)


async def test_unknown_model_has_code_model_not_found(client: httpx2.AsyncClient) -> None:
    error = assert_openai_error(await client.post("/v1/chat/completions", json={**CHAT, "model": "x"}), 404)
    assert error["code"] == "model_not_found"


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe"])
async def test_malformed_body_is_a_400(client: httpx2.AsyncClient, content: bytes) -> None:
    assert_openai_error(await client.post("/v1/chat/completions", content=content), 400)


async def test_prompt_longer_than_the_context_is_a_400(make_client: MakeClient) -> None:
    client = make_client(max_model_len=8)
    messages = [{"role": "user", "content": "word " * 20}]
    response = await client.post("/v1/chat/completions", json={**CHAT, "messages": messages})
    assert "maximum context length is 8" in assert_openai_error(response, 400)["message"]


async def test_default_max_tokens_shrinks_to_fit_the_context(make_client: MakeClient) -> None:
    client = make_client(max_model_len=10)
    response = await client.post("/v1/completions", json={"model": "canned", "prompt": "a b c"})
    assert response.json()["usage"]["completion_tokens"] == 7


async def test_queue_full_is_a_503_with_retry_after(make_client: MakeClient) -> None:
    client = make_client(max_concurrency=1, max_queue=0, token_delay=0.05)
    slow = asyncio.ensure_future(
        client.post("/v1/completions", json={"model": "canned", "prompt": "a", "max_tokens": 20})
    )
    await asyncio.sleep(0.2)
    response = await client.post("/v1/completions", json={"model": "canned", "prompt": "a", "max_tokens": 1})
    assert_openai_error(response, 503)
    assert response.headers["retry-after"] == "1"
    assert (await slow).status_code == 200


async def test_queue_timeout_is_a_503(make_client: MakeClient) -> None:
    client = make_client(max_concurrency=1, max_queue=4, queue_timeout=0.1, token_delay=0.05)
    slow = asyncio.ensure_future(
        client.post("/v1/completions", json={"model": "canned", "prompt": "a", "max_tokens": 10})
    )
    await asyncio.sleep(0.1)
    response = await client.post(
        "/v1/completions", json={"model": "canned", "prompt": "a", "max_tokens": 1, "stream": True}
    )
    assert_openai_error(response, 503)
    await slow


async def test_abort_stops_a_running_generation(make_client: MakeClient) -> None:
    client = make_client(token_delay=0.02)
    body = {"model": "canned", "prompt": "a", "max_tokens": 500}
    running = asyncio.ensure_future(client.post("/v1/completions", json=body, headers={"X-Request-Id": "r1"}))
    await asyncio.sleep(0.2)
    aborted = await client.post("/abort/r1")
    response = await asyncio.wait_for(running, timeout=5)
    assert response.json()["choices"][0]["finish_reason"] == "abort"
    assert response.json()["usage"]["completion_tokens"] < 500
    assert aborted.json() == {"id": "r1", "aborted": True, "usage": response.json()["usage"]}
    assert client.ctx.active == {}  # type: ignore[attr-defined]


async def test_abort_after_the_end_answers_the_final_usage(client: httpx2.AsyncClient) -> None:
    body = {"model": "canned", "prompt": "a b", "max_tokens": 3, "stream": True}
    response = await client.post("/v1/completions", json=body, headers={"X-Request-Id": "done-1"})
    assert sse_events(response.text)[-1] == "[DONE]"
    aborted = await client.post("/abort/done-1")
    assert aborted.status_code == 200
    usage = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert aborted.json() == {"id": "done-1", "aborted": False, "usage": usage}


async def test_a_request_refused_at_admission_leaves_no_usage_to_abort(make_client: MakeClient) -> None:
    client = make_client(max_concurrency=1, max_queue=0, token_delay=0.05)
    body = {"model": "canned", "prompt": "a", "max_tokens": 20}
    slow = asyncio.ensure_future(client.post("/v1/completions", json=body, headers={"X-Request-Id": "slow"}))
    await asyncio.sleep(0.2)
    refused = await client.post("/v1/completions", json=body, headers={"X-Request-Id": "full-1"})
    assert_openai_error(refused, 503)
    assert_openai_error(await client.post("/abort/full-1"), 404)
    assert (await slow).status_code == 200
    assert (await client.post("/abort/slow")).json()["usage"]["completion_tokens"] == 20


async def test_abort_of_an_unknown_request_is_a_404(client: httpx2.AsyncClient) -> None:
    assert_openai_error(await client.post("/abort/nope"), 404)


async def test_embeddings_as_floats_and_base64_agree(make_client: MakeClient) -> None:
    client = make_client(task="embed", served=("mini",))
    floats = (await client.post("/v1/embeddings", json={"model": "mini", "input": ["a", "b"]})).json()
    assert [d["index"] for d in floats["data"]] == [0, 1]
    packed = (
        await client.post("/v1/embeddings", json={"model": "mini", "input": "a", "encoding_format": "base64"})
    ).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(floats["data"][0]["embedding"], rel=1e-6)
    assert floats["usage"]["prompt_tokens"] == 2


async def test_chat_against_an_embedding_model_is_a_400(make_client: MakeClient) -> None:
    client = make_client(task="embed", served=("canned",))
    assert_openai_error(await client.post("/v1/chat/completions", json=CHAT), 400, "model")


async def test_draining_worker_refuses_requests_and_fails_health(client: httpx2.AsyncClient) -> None:
    client.ctx.draining = True  # type: ignore[attr-defined]
    assert (await client.get("/health")).status_code == 503
    assert_openai_error(await client.post("/v1/chat/completions", json=CHAT), 503)


async def test_models_health_and_status_describe_the_worker(make_client: MakeClient) -> None:
    client = make_client(served=("a", "b"), max_concurrency=3)
    models = (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["a", "b"]
    health = (await client.get("/health")).json()
    assert health == {"status": "ok", "nonce": client.ctx.nonce}  # type: ignore[attr-defined]
    status = (await client.get("/status")).json()
    assert status["served_names"] == ["a", "b"]
    assert status["in_flight"] == 0
