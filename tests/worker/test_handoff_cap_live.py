"""HANDOFF_MAX_BYTES in a decode worker's environment caps what it reads from a real prefill worker.

Two runworker processes with SmolLM2 in float32 on loopback, unregistered:
the request names the prefill worker itself, as the portal does. The prefill
worker makes its hand-off (about 46 KB per prompt token); the decode worker,
capped at 1,000 bytes, stops reading it, says so in its log, and prefills
itself: the answer is token for token the one it gives alone.
"""

from __future__ import annotations

import httpx2
import pytest

from inference.protocol.headers import PREFILL_WORKERS
from tests.processes import WorkerProcess, all_ready, subprocess_env, wait_for

pytestmark = pytest.mark.slow
BODY = {
    "model": "smol",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "temperature": 0,
    "max_tokens": 20,
}


def smol(role: str, **env: str) -> WorkerProcess:
    args = ["--model-path", "smollm2-135m-instruct", "--model-names", "smol", "--backend", "transformers"]
    return WorkerProcess([*args, "--dtype", "float32", "--role", role, "--no-register"], subprocess_env(env))


def answer(worker: WorkerProcess, headers: dict[str, str] | None = None) -> str:
    response = httpx2.post(f"{worker.address}/v1/chat/completions", json=BODY, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def status(worker: WorkerProcess) -> dict:
    return httpx2.get(f"{worker.address}/status", timeout=10).json()


def test_a_decode_worker_prefills_itself_when_the_handoff_passes_its_cap() -> None:
    prefill, decode = all_ready(smol("prefill"), smol("decode", HANDOFF_MAX_BYTES="1000"), timeout=240)
    with prefill, decode:
        alone = answer(decode)
        assert "Paris" in alone
        assert answer(decode, {PREFILL_WORKERS: prefill.address}) == alone
        assert status(prefill)["prefills_served"] == 1  # it made the hand-off
        assert status(decode)["handoffs_received"] == 0  # and the decode worker did not take it
        assert wait_for(lambda: "over HANDOFF_MAX_BYTES (1000); prefilling here" in decode.output, 5)
