"""The vLLM engine on a fake vLLM shaped like vLLM 0.34 (and older releases where they differ).

vLLM needs CUDA, which this machine does not have: `fake_vllm` stands in for
the package (its exception hierarchy, `AsyncLLM` with its `model_config`,
`tokens_input`, the beam-search mixin, `notify_kv_transfer_request_rejected`),
with the real tokenizer of the packaged SmolLM2. What is checked is ours: the
errors a client gets, the context length, the beam path and scores, the
prefill/decode fallback and release, and the drain.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest

from inference.engines.base import BeamSearch, EngineConfig, GenerationRequest
from inference.engines.vllm_engine import VllmEngine
from inference.engines.vllm_mapping import invalid_request, loopback_host
from inference.errors import EngineError, HandoffRefused, InvalidRequest, PromptTooLong
from inference.loading import convert_gguf, packaged_model_path
from inference.sampling import Guide, SamplingParams
from inference.worker.app import build_app
from inference.worker.serving import WorkerContext
from tests.inference import fake_vllm

NIXL = {"kv_connector": "NixlConnector", "kv_role": "kv_both"}
HANDOFF = {
    "do_remote_prefill": True,
    "remote_engine_id": "p1",
    "remote_block_ids": [3, 4],
    "remote_port": 5600,
}


@pytest.fixture(scope="module")
def folder(model_cache_dir: Path) -> Path:
    """The packaged SmolLM2 converted to a folder: its tokenizer and config.json are what vLLM reads."""
    return convert_gguf(packaged_model_path("smollm2-135m-instruct"), cache_dir=model_cache_dir)


def make_engine(
    monkeypatch: pytest.MonkeyPatch, folder: Path, release: str = "0.34", **config: Any
) -> tuple[VllmEngine, fake_vllm.AsyncLLM]:
    fake_vllm.install(monkeypatch, release)
    engine = VllmEngine(
        EngineConfig("smollm2-135m-instruct", device="cuda", **config), folder=folder, default_name="smol"
    )
    return engine, engine.engine


def request(
    engine: VllmEngine, rid: str = "r1", *, handoff: bytes | None = None, **params: Any
) -> GenerationRequest:
    prompt = engine.tokenize(
        engine.render_chat([{"role": "user", "content": "What is the capital of France?"}])
    )
    return GenerationRequest(rid, prompt, SamplingParams(**params), handoff)


async def text_of(engine: VllmEngine, job: GenerationRequest) -> str:
    return "".join([d.text async for d in engine.generate(job)])


def test_the_context_length_is_vllms_not_the_tokenizers(monkeypatch, folder):
    engine, _ = make_engine(monkeypatch, folder)
    assert engine.tokenizer.model_max_length > 10**20  # what the exported folder's tokenizer says
    assert (
        engine.info.max_model_len
        == json.loads((folder / "config.json").read_text())["max_position_embeddings"]
    )
    limited, _ = make_engine(monkeypatch, folder, max_model_len=2048)
    assert limited.info.max_model_len == 2048


async def test_a_prompt_past_vllms_context_is_refused_before_vllm(monkeypatch, folder):
    engine, llm = make_engine(monkeypatch, folder, max_model_len=64)
    with pytest.raises(PromptTooLong) as caught:
        await text_of(engine, request(engine, max_tokens=60))
    assert caught.value.status_code == 400
    assert "maximum context length is 64 tokens" in str(caught.value)
    assert llm.added == []


@pytest.mark.parametrize("release", ["0.34", "0.26", "0.11.0"])
async def test_a_bad_regex_is_a_400_naming_the_field_on_every_release(monkeypatch, folder, release):
    engine, llm = make_engine(monkeypatch, folder, release)
    job = request(engine, guide=Guide("regex", "([a-z", field="guided_regex"))
    with pytest.raises(InvalidRequest) as caught:
        await text_of(engine, job)
    assert (caught.value.status_code, caught.value.field) == (400, "guided_regex")
    assert str(caught.value).startswith("Error parsing regex")
    assert llm.added == []  # refused as vLLM added it: nothing to abort


def test_vllms_parameter_names_the_field_when_it_is_ours(monkeypatch):
    fake = fake_vllm.install(monkeypatch, "0.34")
    refused = fake.refuse("max_tokens must be at least 1, got 0.", "max_tokens")
    assert isinstance(refused, fake.exceptions.VLLMClientError)
    assert not isinstance(refused, ValueError)  # what `except ValueError` missed
    named = invalid_request(refused, SamplingParams(guide=Guide("regex", "a", field="guided_regex")))
    assert named.field == "max_tokens"
    assert invalid_request(fake.refuse("Error parsing regex"), SamplingParams()).field is None


async def test_a_bad_regex_answers_400_from_the_worker(monkeypatch, folder):
    engine, _ = make_engine(monkeypatch, folder)
    app = build_app(WorkerContext(engine=engine, served_names=["smol"]))
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://worker"
    ) as client:
        body = {"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "guided_regex": "([a-z"}
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "guided_regex")
    assert "Error parsing regex" in error["message"]


@pytest.mark.parametrize(("release", "form"), [("0.34", {"type": "token"}), ("0.11.0", {})])
async def test_prompts_go_to_vllm_as_token_inputs_of_the_release(monkeypatch, folder, release, form):
    engine, llm = make_engine(monkeypatch, folder, release)
    job = request(engine, temperature=0)
    assert await text_of(engine, job) == "Paris."
    prompt, sampling, rid = llm.added[0]
    assert prompt == {**form, "prompt_token_ids": job.prompt_token_ids}
    assert sampling.output_kind is fake_vllm.RequestOutputKind.DELTA
    assert rid == "r1"
    if release == "0.34":
        assert llm.deprecated_prompts == 0
    assert llm.aborted == []  # finished: nothing to abort


BEAMS = [
    ([10, 11], -2.0, "length"),  # -1.0 per token
    ([20, 21, 22, 23, 24, 25], -3.0, "length"),  # -0.5
    ([30, 31, 32], -2.4, "stop"),  # ended on EOS: 4 tokens, -0.6
    ([40], -0.4, "stop"),  # EOS after one token: 2 tokens, -0.2
]


@pytest.mark.parametrize("release", ["0.34", "0.11.0"])
async def test_beams_are_scored_with_the_length_penalty_and_ranked_by_it(monkeypatch, folder, release):
    engine, llm = make_engine(monkeypatch, folder, release)
    llm.beams = BEAMS
    beams = await engine.beam_search(request(engine, max_tokens=8, temperature=0), BeamSearch(width=4, n=3))
    assert [(b.token_ids, b.score, b.finish_reason) for b in beams] == [
        ((40,), pytest.approx(-0.2), "stop"),
        ((20, 21, 22, 23, 24, 25), pytest.approx(-0.5), "length"),
        ((30, 31, 32), pytest.approx(-0.6), "stop"),
    ]
    assert beams[0].text == engine.tokenizer.decode([40])
    squared = await engine.beam_search(
        request(engine, max_tokens=8), BeamSearch(width=4, n=1, length_penalty=2.0)
    )
    assert squared[0].score == pytest.approx(-3.0 / 36)


async def test_beam_search_runs_vllms_mixin_over_our_engine(monkeypatch, folder):
    engine, llm = make_engine(monkeypatch, folder, "0.34")
    llm.beams = BEAMS
    seen = []
    original = fake_vllm.BeamSearchOnlineMixin.beam_search

    def spy(self, prompt, request_id, params, **rest):
        seen.append((self.engine_client, self.renderer, prompt, request_id, params))
        return original(self, prompt, request_id, params, **rest)

    monkeypatch.setattr(fake_vllm.BeamSearchOnlineMixin, "beam_search", spy)
    job = request(engine, "beams", max_tokens=8, temperature=0)
    await engine.beam_search(job, BeamSearch(width=3, n=1, length_penalty=0.5))
    client, renderer, prompt, rid, params = seen[0]
    assert (client, renderer) == (llm, llm.renderer)
    assert prompt == {"type": "token", "prompt_token_ids": job.prompt_token_ids}
    assert rid == "beams"
    assert (params.beam_width, params.max_tokens, params.length_penalty) == (3, 8, 0.5)


async def test_a_release_without_a_callable_beam_search_refuses_it_naming_the_field(monkeypatch, folder):
    engine, _ = make_engine(monkeypatch, folder, "0.20")
    with pytest.raises(InvalidRequest) as caught:
        await engine.beam_search(request(engine, max_tokens=8), BeamSearch(width=2, n=1))
    assert (caught.value.status_code, caught.value.field) == (400, "use_beam_search")


async def test_early_stopping_is_refused_naming_it_since_vllm_has_none(monkeypatch, folder):
    engine, _ = make_engine(monkeypatch, folder, "0.34")
    with pytest.raises(InvalidRequest) as caught:
        await engine.beam_search(request(engine, max_tokens=8), BeamSearch(width=2, n=1, early_stopping=True))
    assert (caught.value.status_code, caught.value.field) == (400, "early_stopping")


async def test_a_decode_whose_kv_cache_fails_to_load_is_handed_back_for_a_local_prefill(monkeypatch, folder):
    engine, llm = make_engine(monkeypatch, folder, extra={"kv_transfer_config": NIXL})
    llm.kv_load_fails = True
    with pytest.raises(HandoffRefused):
        await text_of(engine, request(engine, handoff=json.dumps(HANDOFF).encode()))
    assert llm.added[0][1].extra_args == {"kv_transfer_params": HANDOFF}
    assert llm.rejected == []  # vLLM took it: its connector cleans up
    assert llm.aborted == []  # and finished it


async def test_an_error_finish_on_a_whole_request_is_a_server_error(monkeypatch, folder):
    engine, llm = make_engine(monkeypatch, folder)

    async def fail(*args, **kwargs):
        failed = fake_vllm.CompletionOutput(0, "", [], None, None, "error")
        yield fake_vllm.RequestOutput("r1", None, [], None, [failed], True)

    monkeypatch.setattr(llm, "generate", fail)
    with pytest.raises(EngineError) as caught:
        await text_of(engine, request(engine))
    assert caught.value.status_code == 500
    assert not isinstance(caught.value, HandoffRefused)


@pytest.mark.parametrize("refusal", ["prompt too long", "bad regex"])
async def test_a_decode_refused_before_vllm_took_it_releases_the_prefill_blocks(monkeypatch, folder, refusal):
    engine, llm = make_engine(monkeypatch, folder, max_model_len=64, extra={"kv_transfer_config": NIXL})
    params: dict[str, Any] = {"max_tokens": 60} if refusal == "prompt too long" else {"max_tokens": 4}
    if refusal == "bad regex":
        params["guide"] = Guide("regex", "([a-z", field="guided_regex")
    with pytest.raises(InvalidRequest):
        await text_of(engine, request(engine, "d1", handoff=json.dumps(HANDOFF).encode(), **params))
    assert llm.rejected == [("d1", HANDOFF)]


async def test_a_decode_vllm_took_releases_nothing_and_old_releases_have_no_release(monkeypatch, folder):
    engine, llm = make_engine(monkeypatch, folder, extra={"kv_transfer_config": NIXL})
    assert await text_of(engine, request(engine, handoff=json.dumps(HANDOFF).encode())) == "Paris."
    assert llm.rejected == []
    old, _ = make_engine(monkeypatch, folder, "0.11.0", max_model_len=64, extra={"kv_transfer_config": NIXL})
    with pytest.raises(PromptTooLong):  # nothing to call: the blocks wait for their lease, as before
        await text_of(old, request(old, handoff=json.dumps(HANDOFF).encode(), max_tokens=60))


async def test_a_prefill_on_localhost_warns_once_about_the_side_channel_host(monkeypatch, folder, caplog):
    engine, llm = make_engine(monkeypatch, folder, extra={"kv_transfer_config": NIXL})
    llm.prefill_host = "localhost"
    with caplog.at_level(logging.WARNING, logger="inference.engines.vllm_engine"):
        blob = await engine.prefill(request(engine, "p1", max_tokens=30))
        await engine.prefill(request(engine, "p2", max_tokens=30))
    assert json.loads(blob)["remote_host"] == "localhost"
    assert llm.added[0][1].max_tokens == 1
    warnings = [r.getMessage() for r in caplog.records if "VLLM_NIXL_SIDE_CHANNEL_HOST" in r.getMessage()]
    assert len(warnings) == 1
    assert [loopback_host({"remote_host": h}) for h in ("127.0.0.1", "::1", "10.0.0.7", None)] == [
        "127.0.0.1",
        "::1",
        None,
        None,
    ]


async def test_shutdown_stops_vllms_engine(monkeypatch, folder):
    engine, llm = make_engine(monkeypatch, folder)
    await engine.shutdown()
    assert llm.shutdowns == 1


class PrefillWorker(BaseHTTPRequestHandler):
    """A prefill worker's answer on loopback: vLLM's kv_transfer_params as the hand-off."""

    def do_POST(self) -> None:  # http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        blob = json.dumps(HANDOFF).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def prefill_worker() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), PrefillWorker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_the_worker_prefills_here_when_vllm_cannot_load_the_prefilled_cache(
    monkeypatch, folder, prefill_worker
):
    engine, llm = make_engine(monkeypatch, folder, extra={"kv_transfer_config": NIXL})
    llm.kv_load_fails = True
    app = build_app(WorkerContext(engine=engine, served_names=["smol"], role="decode"))
    body = {
        "model": "smol",
        "messages": [{"role": "user", "content": "Capital of France?"}],
        "temperature": 0,
    }
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://worker"
    ) as client:
        response = await client.post(
            "/v1/chat/completions", json=body, headers={"X-Prefill-Workers": prefill_worker}
        )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Paris."
    decode, local = (sampling.extra_args for _, sampling, _ in llm.added)
    assert decode == {"kv_transfer_params": HANDOFF}
    assert local is None


def test_the_fake_is_shaped_like_vllm_034s_hierarchy(monkeypatch):
    new = fake_vllm.install(monkeypatch, "0.34").exceptions
    assert issubclass(new.VLLMValidationError, new.VLLMClientError)
    assert issubclass(new.VLLMClientError, new.VLLMError)
    assert not issubclass(new.VLLMValidationError, ValueError)
    old = fake_vllm.install(monkeypatch, "0.26").exceptions
    assert issubclass(old.VLLMValidationError, ValueError)
    assert not hasattr(old, "VLLMClientError")
