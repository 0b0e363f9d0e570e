"""Prefill/decode disaggregation through a real portal: a prefill worker, a decode worker, SmolLM2.

Both workers run the transformers engine in float32 (in bfloat16 the rounding
depends on what shares a batch). The portal sends each request to the decode
worker with the prefill worker to ask; the KV cache goes from worker to
worker. The answers must be token for token those of the decode worker
prefilling alone, streamed or not; with the prefill worker killed, requests
still succeed (the decode worker prefills itself).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry.models import Worker
from registry.services.keys import create_api_key
from tests.portal_process import PortalProcess, start_portal
from tests.processes import WorkerProcess, all_ready

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
QUESTIONS = ["What is the capital of France?", "Name three colours of the rainbow."]


def smol(role: str) -> WorkerProcess:
    args = ["--model-path", "smollm2-135m-instruct", "--model-names", "smol", "--backend", "transformers"]
    return WorkerProcess([*args, "--dtype", "float32", "--role", role, "--heartbeat-interval", "0.5"], None)


@pytest.fixture
def fleet() -> Iterator[tuple[PortalProcess, WorkerProcess, WorkerProcess]]:
    prefill, decode = all_ready(smol("prefill"), smol("decode"), timeout=240)
    with prefill, decode, start_portal(extra_env={"WORKER_CACHE_SECONDS": "0.2"}) as portal:
        yield portal, prefill, decode


def body(question: str, **extra: object) -> dict:
    messages = [{"role": "user", "content": question}]
    return {"model": "smol", "messages": messages, "temperature": 0, "max_tokens": 40, **extra}


def streamed_text(url: str, payload: dict, headers: dict[str, str]) -> str:
    parts = []
    with httpx2.stream(
        "POST", url, json={**payload, "stream": True}, headers=headers, timeout=120
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[len("data: ") :])
                if chunk["choices"]:
                    parts.append(chunk["choices"][0]["delta"].get("content") or "")
    return "".join(parts)


def status(worker: WorkerProcess) -> dict:
    return httpx2.get(f"{worker.address}/status", timeout=10).json()


def first_tokens_counted(portal: PortalProcess, role: str) -> float:
    """First tokens the portal counted for requests its `role` workers answered (from /metrics)."""
    text = httpx2.get(f"{portal.url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "portal_time_to_first_token_seconds_count" and sample.labels.get("role") == role
    )


def test_the_portal_pairs_prefill_and_decode_and_the_answers_match_one_worker(fleet):
    portal, prefill, decode = fleet
    assert {w.role for w in Worker.objects.all()} == {"prefill", "decode"}
    _, secret = create_api_key(name="pd")
    headers = {"Authorization": f"Bearer {secret}"}
    url = f"{portal.url}/v1/chat/completions"
    for question in QUESTIONS:
        alone = httpx2.post(f"{decode.address}/v1/chat/completions", json=body(question), timeout=120).json()
        split = httpx2.post(url, json=body(question), headers=headers, timeout=120)
        assert split.status_code == 200, split.text
        expected = alone["choices"][0]["message"]["content"]
        assert split.json()["choices"][0]["message"]["content"] == expected
        counts = ("prompt_tokens", "completion_tokens", "total_tokens")  # the cache's share may differ
        assert {k: split.json()["usage"][k] for k in counts} == {k: alone["usage"][k] for k in counts}
        assert streamed_text(url, body(question), headers) == expected
    assert status(prefill)["prefills_served"] == 2 * len(QUESTIONS)
    assert status(decode)["handoffs_received"] == 2 * len(QUESTIONS)
    assert first_tokens_counted(portal, role="decode") == 2 * len(QUESTIONS)

    prefill.kill()  # a failed prefill: the decode worker prefills itself
    after = httpx2.post(url, json=body(QUESTIONS[0]), headers=headers, timeout=120)
    assert after.status_code == 200, after.text
    assert "Paris" in after.json()["choices"][0]["message"]["content"]
    assert status(decode)["handoffs_received"] == 2 * len(QUESTIONS)
