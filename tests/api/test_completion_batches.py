"""Several prompts in one /v1/completions request through the portal: one worker request, reserved whole.

In-process against a fake upstream: the portal must check the batch with the
workers' parser, send it to one worker as it came (a batch never splits, so it
never half-fails), reserve tokens for every prompt, and pass the answer back.
"""

from __future__ import annotations

import json

import httpx2
import pytest
from asgiref.sync import sync_to_async

from portal.gateway.limits import estimate
from tests.api.test_views import error_of, make_key, post
from tests.gateway.conftest import add_worker

pytestmark = pytest.mark.django_db(transaction=True)
IDS = [[1, 2, 3], [4, 5], [6]]


def answer(prompts: int, n: int = 1) -> dict:
    choices = [
        {"index": i, "text": "x", "finish_reason": "length", "logprobs": None} for i in range(prompts * n)
    ]
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "tiny",
        "choices": choices,
        "usage": {"prompt_tokens": 6, "completion_tokens": prompts * n, "total_tokens": 6 + prompts * n},
    }


async def test_a_batch_of_token_id_prompts_is_one_request_to_one_worker(served_model, upstream):
    await sync_to_async(add_worker)(served_model, "w1")
    await sync_to_async(add_worker)(served_model, "w2")
    seen = upstream(lambda r: httpx2.Response(200, json=answer(3, 2)))
    body = {"model": "tiny", "prompt": IDS, "n": 2, "max_tokens": 1, "logprobs": 1, "echo": True}
    response = await post("/v1/completions", body, await make_key())
    assert response.status_code == 200, response.content
    assert [c["index"] for c in json.loads(response.content)["choices"]] == list(range(6))
    assert len(seen) == 1
    sent = json.loads(seen[0].content)
    assert (sent["prompt"], sent["n"], sent["echo"]) == (IDS, 2, True)


async def test_echo_with_max_tokens_zero_passes_and_without_echo_is_a_400(served_model, upstream):
    await sync_to_async(add_worker)(served_model, "w1")
    seen = upstream(lambda r: httpx2.Response(200, json=answer(1)))
    secret = await make_key()
    scored = {"model": "tiny", "prompt": [[1, 2]], "max_tokens": 0, "echo": True, "logprobs": 0}
    assert (await post("/v1/completions", scored, secret)).status_code == 200
    refused = await post("/v1/completions", {**scored, "echo": False}, secret)
    assert refused.status_code == 400
    assert error_of(refused)["param"] == "max_tokens"
    assert len(seen) == 1


@pytest.mark.parametrize("prompt", [["a", [1]], [], [[]], [[1], "b"], ["a"] * 65])
async def test_a_malformed_batch_is_a_400_naming_prompt_before_any_worker(served_model, upstream, prompt):
    await sync_to_async(add_worker)(served_model, "w1")
    seen = upstream(lambda r: httpx2.Response(200, json=answer(1)))
    response = await post("/v1/completions", {"model": "tiny", "prompt": prompt}, await make_key())
    assert response.status_code == 400
    assert error_of(response)["param"] == "prompt"
    assert seen == []


def test_the_reservation_counts_every_prompt_text_or_token_ids():
    for prompts in (["a", "b", "c"], IDS):
        cost = estimate({"model": "tiny", "prompt": prompts, "n": 2, "max_tokens": 10})
        assert cost.completions == 3 * 2
    assert estimate({"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 10}).completions == 1
    scoring = {"model": "tiny", "prompt": IDS, "max_tokens": 0, "echo": True}
    assert estimate(scoring).total == 6  # the prompts alone: max_tokens 0 generates nothing
    assert estimate({**scoring, "max_completion_tokens": 5}).total == 6 + 3 * 5  # which wins over it


async def test_a_batch_whose_prompts_together_exceed_the_tokens_per_minute_is_refused(served_model, upstream):
    await sync_to_async(add_worker)(served_model, "w1")
    seen = upstream(lambda r: httpx2.Response(200, json=answer(1)))
    secret = await make_key(tokens_per_minute=40)
    one = {"model": "tiny", "prompt": [[1]], "max_tokens": 10}
    assert (await post("/v1/completions", one, secret)).status_code == 200
    refused = await post("/v1/completions", {**one, "prompt": [[1]] * 4}, secret)  # 4 + 4 x 10 > 40
    assert refused.status_code == 429, refused.content  # without Retry-After: waiting cannot help
    assert "Retry-After" not in refused.headers
    assert "max_tokens" in error_of(refused)["message"]
    assert len(seen) == 1
