"""A decode worker holds a prefill hand-off to its size cap and to its model before decoding from it.

The hand-off comes from another process. One past HANDOFF_MAX_BYTES is not
read past the cap; one whose first token is outside the vocabulary (a
device-side assert on CUDA), or whose rows have another shape or dtype, is
refused. Either way the decode worker prefills itself and answers as if it
had never been paired: the same tokens, status 200.

The unit tests build hand-offs from small tensors; the others use SmolLM2 on
the CPU: a decode worker's app in this process asks a prefill worker on
loopback (a small HTTP server that answers the bytes a test gives it: a real
hand-off made by the same engine, as is or altered).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest
import torch

from inference.engines import handoff
from inference.engines.base import Engine, TokenLogprob
from inference.errors import HandoffRefused
from inference.protocol.headers import PREFILL_ONLY, PREFILL_WORKERS
from inference.worker.app import build_app
from inference.worker.serving import WorkerContext

in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the engine fixture lives in the module's loop
ROWS = (1, 2, 3, 4)
FIT = handoff.Fit(prompt_ids=[5, 6, 7], layers=2, rows=ROWS, dtype=torch.float32, vocab_size=100)


def small_handoff(**changes: object) -> handoff.Handoff:
    rows = [(torch.zeros(ROWS), torch.zeros(ROWS)) for _ in range(2)]
    fitting = handoff.Handoff(
        prompt_ids=[5, 6, 7],
        first_token=42,
        first_logprob=TokenLogprob(42, -0.5, ((42, -0.5), (7, -1.0))),
        layers=rows,
        generator_state=torch.Generator().get_state(),
    )
    return replace(fitting, **changes)  # type: ignore[arg-type]


def test_a_handoff_that_fits_is_taken_as_it_came() -> None:
    received = small_handoff()
    assert handoff.check(received, FIT) is received


@pytest.mark.parametrize("token", [100, 10**9, -1])
def test_a_first_token_outside_the_vocabulary_is_refused(token: int) -> None:
    with pytest.raises(HandoffRefused, match=f"token id {token}; this model's are 0 to 99"):
        handoff.check(small_handoff(first_token=token), FIT)


def test_a_logprob_token_outside_the_vocabulary_is_refused() -> None:
    with pytest.raises(HandoffRefused, match="token id 100"):
        handoff.check(small_handoff(first_logprob=TokenLogprob(42, -0.5, ((100, -0.7),))), FIT)


@pytest.mark.parametrize(
    "layers",
    [
        [(torch.zeros(ROWS), torch.zeros(ROWS))],  # a layer missing
        [(torch.zeros(ROWS), torch.zeros(ROWS))] * 3,  # one too many
        [(torch.zeros(ROWS), torch.zeros(ROWS)), (torch.zeros(1, 2, 4, 4),) * 2],  # longer rows
        [(torch.zeros(ROWS), torch.zeros(ROWS)), (torch.zeros(ROWS), torch.zeros(1, 3, 3, 4))],  # more heads
        [(torch.zeros(ROWS), torch.zeros(ROWS, dtype=torch.bfloat16))] * 2,  # another dtype
    ],
    ids=["missing-layer", "extra-layer", "longer-rows", "more-heads", "other-dtype"],
)
def test_rows_of_another_shape_or_dtype_are_refused(layers: list) -> None:
    with pytest.raises(HandoffRefused, match=r"does not fit: 2 layers of \(1, 2, 3, 4\) torch.float32"):
        handoff.check(small_handoff(layers=layers), FIT)


def test_a_generator_state_that_is_not_a_cpu_generators_is_refused() -> None:
    for state in (torch.zeros(16, dtype=torch.uint8), torch.Generator().get_state().float()):
        with pytest.raises(HandoffRefused, match="generator state"):
            handoff.check(small_handoff(generator_state=state), FIT)


def test_a_handoff_for_another_prompt_is_refused() -> None:
    with pytest.raises(HandoffRefused, match="another prompt"):
        handoff.check(small_handoff(prompt_ids=[5, 6, 8]), FIT)


# -- a decode worker with SmolLM2, and a prefill worker on loopback ---------------------------------


@dataclass
class PrefillAnswer:
    """What the loopback prefill worker answers: these bytes, with a Content-Length or without one."""

    blob: bytes = b""
    with_length: bool = True
    asked: int = 0


@pytest.fixture(scope="module")
def prefill_worker() -> Iterator[tuple[str, PrefillAnswer]]:
    answer = PrefillAnswer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            answer.asked += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if answer.with_length:
                self.send_header("Content-Length", str(len(answer.blob)))
            self.end_headers()  # without a length (HTTP/1.0), the body ends when the connection does
            with contextlib.suppress(OSError):  # the decode worker stopped reading at its cap
                self.wfile.write(answer.blob)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answer
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def decode_worker(chat_engine: Engine) -> httpx2.AsyncClient:
    ctx = WorkerContext(engine=chat_engine, served_names=["smol"])
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=build_app(ctx)), base_url="http://worker")
    client.ctx = ctx  # type: ignore[attr-defined]
    return client


BODY = {
    "model": "smol",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "temperature": 0,
    "max_tokens": 12,
}


async def answer_text(worker: httpx2.AsyncClient, headers: dict[str, str] | None = None) -> str:
    response = await worker.post("/v1/chat/completions", json=BODY, headers=headers or {}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


async def real_handoff(worker: httpx2.AsyncClient) -> bytes:
    """The hand-off a prefill worker with this model makes for BODY."""
    response = await worker.post("/v1/chat/completions", json=BODY, headers={PREFILL_ONLY: "1"}, timeout=120)
    assert response.status_code == 200, response.text
    return response.content


@in_module_loop
async def test_a_handoff_within_the_cap_is_decoded_from(decode_worker, prefill_worker):
    address, answer = prefill_worker
    expected = await answer_text(decode_worker)
    answer.blob, answer.with_length = await real_handoff(decode_worker), True
    assert await answer_text(decode_worker, {PREFILL_WORKERS: address}) == expected
    assert decode_worker.ctx.handoffs_received == 1


@in_module_loop
@pytest.mark.parametrize("with_length", [True, False], ids=["content-length", "until-close"])
async def test_a_handoff_over_the_cap_is_not_read_and_the_decode_worker_prefills_itself(
    decode_worker, prefill_worker, caplog, with_length
):
    address, answer = prefill_worker
    expected = await answer_text(decode_worker)
    blob = await real_handoff(decode_worker)
    answer.blob, answer.with_length = blob, with_length
    decode_worker.ctx.handoff_max_bytes = len(blob) - 1
    asked = answer.asked
    with caplog.at_level(logging.WARNING, logger="inference.worker"):
        assert await answer_text(decode_worker, {PREFILL_WORKERS: address}) == expected
    assert answer.asked == asked + 1
    assert decode_worker.ctx.handoffs_received == 0
    assert f"over HANDOFF_MAX_BYTES ({len(blob) - 1}); prefilling here" in caplog.text


@in_module_loop
async def test_a_first_token_outside_the_vocabulary_makes_the_decode_worker_prefill_itself(
    decode_worker, prefill_worker, caplog, chat_engine
):
    address, answer = prefill_worker
    expected = await answer_text(decode_worker)
    real = handoff.loads(await real_handoff(decode_worker))
    vocab = chat_engine.info.vocab_size
    answer.blob, answer.with_length = handoff.dumps(replace(real, first_token=vocab)), True
    with caplog.at_level(logging.WARNING, logger="inference.worker"):
        assert await answer_text(decode_worker, {PREFILL_WORKERS: address}) == expected
    assert f"token id {vocab}; this model's are 0 to {vocab - 1}" in caplog.text
    assert "prefilling here" in caplog.text
    assert await answer_text(decode_worker) == expected  # the engine serves on


@in_module_loop
async def test_rows_in_another_dtype_make_the_decode_worker_prefill_itself(
    decode_worker, prefill_worker, caplog
):
    address, answer = prefill_worker
    expected = await answer_text(decode_worker)
    real = handoff.loads(await real_handoff(decode_worker))
    halved = [(k.to(torch.bfloat16), v.to(torch.bfloat16)) for k, v in real.layers]
    answer.blob, answer.with_length = handoff.dumps(replace(real, layers=halved)), True
    with caplog.at_level(logging.WARNING, logger="inference.worker"):
        assert await answer_text(decode_worker, {PREFILL_WORKERS: address}) == expected
    assert "does not fit" in caplog.text
