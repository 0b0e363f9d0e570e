"""Several prompts in one /v1/completions request, on the worker's app over the canned (fake) engine.

The canned engine answers each prompt with the same words, so what is checked
here is the bookkeeping: one choice per prompt × n, indexed prompt-major,
usage summed, every chunk's `index`, and a batch larger than the engine's
slots that does not wait on itself. Values against a real model are in
tests/worker/test_completions_live.py.
"""

from __future__ import annotations

from collections import Counter

import httpx2
import pytest

from tests.worker.conftest import MakeClient
from tests.worker.test_http_api import assert_openai_error, sse_events

PROMPTS = ["a", "b c", "d e f"]  # the canned engine counts one token a word


async def test_a_list_of_prompts_answers_n_choices_each_prompt_major(client: httpx2.AsyncClient) -> None:
    body = {"model": "canned", "prompt": PROMPTS, "max_tokens": 2, "n": 2}
    answer = (await client.post("/v1/completions", json=body)).json()
    assert [c["index"] for c in answer["choices"]] == list(range(6))
    assert {c["text"] for c in answer["choices"]} == {"The quick"}
    assert answer["usage"] == {"prompt_tokens": 1 + 2 + 3, "completion_tokens": 6 * 2, "total_tokens": 18}


async def test_token_id_lists_are_prompts_too(client: httpx2.AsyncClient) -> None:
    body = {"model": "canned", "prompt": [[5, 6], [7]], "max_tokens": 1}
    answer = (await client.post("/v1/completions", json=body)).json()
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    assert answer["usage"]["prompt_tokens"] == 3


async def test_a_streamed_batch_indexes_every_chunk_and_sums_the_usage(client: httpx2.AsyncClient) -> None:
    body = {
        "model": "canned",
        "prompt": PROMPTS,
        "max_tokens": 3,
        "n": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = sse_events((await client.post("/v1/completions", json=body)).text)
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    assert Counter(c["choices"][0]["index"] for c in chunks) == dict.fromkeys(range(6), 4)  # 3 tokens, an end
    finished = [c["choices"][0]["index"] for c in chunks if c["choices"][0]["finish_reason"] == "length"]
    assert sorted(finished) == list(range(6))
    text = {
        i: "".join(c["choices"][0]["text"] for c in chunks if c["choices"][0]["index"] == i) for i in range(6)
    }
    assert set(text.values()) == {"The quick brown"}
    assert events[-2]["usage"] == {"prompt_tokens": 6, "completion_tokens": 18, "total_tokens": 24}


async def test_a_batch_larger_than_the_engine_s_slots_does_not_wait_on_itself(
    make_client: MakeClient,
) -> None:
    # 8 prompts x n=2 = 16 engine requests through 2 slots: each choice frees its slot when it ends.
    client = make_client(max_concurrency=2, max_queue=32, queue_timeout=5, token_delay=0.001)
    body = {"model": "canned", "prompt": [f"p{i}" for i in range(8)], "n": 2, "max_tokens": 3}
    response = await client.post("/v1/completions", json=body, timeout=10)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 16
    assert client.ctx.active == {}  # type: ignore[attr-defined]


async def test_a_batch_the_queue_cannot_hold_fails_whole_and_leaves_nothing_running(
    make_client: MakeClient,
) -> None:
    client = make_client(max_concurrency=1, max_queue=1, token_delay=0.01)
    body = {"model": "canned", "prompt": ["a", "b", "c"], "max_tokens": 5}
    assert_openai_error(await client.post("/v1/completions", json=body), 503)
    assert client.ctx.active == {}  # type: ignore[attr-defined]
    assert client.ctx.engine.admission.running == 0  # type: ignore[attr-defined]


async def test_echo_without_logprobs_returns_each_prompt_before_its_text(client: httpx2.AsyncClient) -> None:
    body = {"model": "canned", "prompt": ["a b", "c"], "max_tokens": 1, "echo": True}
    answer = (await client.post("/v1/completions", json=body)).json()
    assert [c["text"] for c in answer["choices"]] == ["a bThe", "cThe"]
    zero = (await client.post("/v1/completions", json={**body, "max_tokens": 0, "n": 2})).json()
    assert [c["text"] for c in zero["choices"]] == ["a b", "a b", "c", "c"]
    assert {c["finish_reason"] for c in zero["choices"]} == {"length"}
    assert zero["usage"] == {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}


async def test_echo_only_streams_each_choice_once_then_usage(client: httpx2.AsyncClient) -> None:
    body = {
        "model": "canned",
        "prompt": ["a b", "c"],
        "max_tokens": 0,
        "echo": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = sse_events((await client.post("/v1/completions", json=body)).text)
    assert [(e["choices"][0]["index"], e["choices"][0]["text"]) for e in events[:2]] == [(0, "a b"), (1, "c")]
    assert events[2]["usage"]["completion_tokens"] == 0
    assert events[3] == "[DONE]"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ["a", [1]]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[]]}, "prompt"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": [[1, 2]], "echo": True}, "prompt"),  # the canned engine cannot decode token ids
    ],
)
async def test_malformed_batches_are_a_400_naming_the_field(
    client: httpx2.AsyncClient, body: dict, param: str
) -> None:
    response = await client.post("/v1/completions", json={"model": "canned", "max_tokens": 1, **body})
    assert_openai_error(response, 400, param)
    assert client.ctx.active == {}  # type: ignore[attr-defined]


async def test_a_batch_beyond_what_the_worker_runs_and_queues_is_a_400(make_client: MakeClient) -> None:
    client = make_client(max_concurrency=2, max_queue=2)
    client.ctx.limits.update(max_concurrency=2, max_queue=2)  # type: ignore[attr-defined]  # as runworker sets
    body = {"model": "canned", "prompt": ["a", "b", "c"], "n": 2, "max_tokens": 1}
    error = assert_openai_error(await client.post("/v1/completions", json=body), 400, "prompt")
    assert "6 choices" in error["message"]
    assert (await client.post("/v1/completions", json={**body, "n": 1})).status_code == 200
