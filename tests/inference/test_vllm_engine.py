"""The vLLM engine's argument mapping everywhere, a real generation where vLLM and a GPU exist.

The engine's behaviour on fakes shaped like vLLM's classes is in test_vllm_engine_fakes.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from inference.engines.base import BeamSearch, Delta, EngineConfig, TokenLogprob, Usage
from inference.engines.vllm_beam import vllm_beam_kwargs
from inference.engines.vllm_mapping import (
    OutputReader,
    decode_kwargs,
    delta_logprobs,
    engine_args_kwargs,
    handoff_bytes,
    handoff_transfer,
    prefill_kwargs,
    structured_output_fields,
    structured_output_kwargs,
    vllm_sampling_kwargs,
)
from inference.errors import HandoffRefused, InvalidRequest
from inference.management.commands.runworker import Command as RunWorker
from inference.management.commands.runworker import engine_config
from inference.sampling import Guide, SamplingParams


def test_engine_config_maps_onto_vllm_engine_args():
    config = EngineConfig(
        "m", dtype="float16", max_concurrency=32, max_model_len=4096, extra={"quantization": "awq", "x": 1}
    )
    kwargs = engine_args_kwargs(config, Path("/models/m"))
    assert kwargs["model"] == "/models/m"
    assert (kwargs["max_num_seqs"], kwargs["max_model_len"], kwargs["dtype"]) == (32, 4096, "float16")
    assert kwargs["quantization"] == "awq"
    assert "x" not in kwargs


def runworker_options(*args: str) -> dict:
    parsed = RunWorker().create_parser("manage.py", "runworker").parse_args(["--model-path", "m", *args])
    return vars(parsed)


def test_runworker_passes_vllms_serving_knobs_through_to_its_engine_args():
    options = runworker_options(
        "--backend", "vllm", "--served-model-name", "small", "--max-num-seqs", "8",
        "--tensor-parallel-size", "2", "--max-num-batched-tokens", "4096", "--gpu-memory-utilization", "0.8",
        "--quantization", "fp8", "--no-enable-prefix-caching",
        "--kv-transfer-config", '{"kv_connector": "NixlConnector", "kv_role": "kv_both"}',
    )  # fmt: skip
    assert options["model_names"] == "small"
    kwargs = engine_args_kwargs(engine_config(options), Path("/models/m"))
    assert kwargs["max_num_seqs"] == 8
    assert kwargs["tensor_parallel_size"] == 2
    assert kwargs["max_num_batched_tokens"] == 4096
    assert kwargs["gpu_memory_utilization"] == 0.8
    assert kwargs["quantization"] == "fp8"
    assert kwargs["enable_prefix_caching"] is False
    assert kwargs["kv_transfer_config"] == {"kv_connector": "NixlConnector", "kv_role": "kv_both"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--tensor-parallel-size", "2"), "--tensor-parallel-size: vLLM options; add --backend vllm."),
        (
            ("--backend", "llamacpp", "--quantization", "awq"),
            "--quantization: vLLM options; add --backend vllm.",
        ),
        (("--backend", "vllm", "--kv-transfer-config", "{nope"), "--kv-transfer-config is not JSON"),
        (
            ("--backend", "vllm", "--kv-transfer-config", '{"kv_role": "kv_both"}'),
            'needs an object with "kv_connector"',
        ),
    ],
)
def test_runworker_refuses_vllm_options_it_cannot_honour_in_one_line(args, message):
    from django.core.management import CommandError

    with pytest.raises(CommandError, match=re.escape(message)):
        engine_config(runworker_options(*args))


def output(text: str, ids: list[int], finished: bool = False, reason: str | None = None):
    completion = SimpleNamespace(text=text, token_ids=ids, logprobs=None, finish_reason=reason)
    return SimpleNamespace(outputs=[completion], finished=finished)


def test_delta_outputs_are_read_as_they_are_holding_tokens_without_text():
    reader = OutputReader(prompt_tokens=5, logprobs=None)
    assert reader.read(output("Pa", [10])) == Delta("Pa", (10,))
    assert reader.read(output("", [11])) is None  # half a character: held
    assert reader.read(output("ris", [12])) == Delta("ris", (11, 12))
    last = reader.read(output(".", [13], finished=True, reason="stop"))
    assert last == Delta(".", (13,), "stop", Usage(5, 4))
    assert reader.finished
    assert not reader.failed


def test_an_error_finish_is_a_failure_not_a_delta():
    reader = OutputReader(prompt_tokens=5, logprobs=None)
    assert reader.read(output("", [], finished=True, reason="error")) is None
    assert (reader.failed, reader.finished, reader.sent, reader.outputs) == (True, True, 0, 1)


def test_sampling_params_map_onto_vllm_names():
    kwargs = vllm_sampling_kwargs(SamplingParams(top_k=0, stop=("END",), ignore_eos=True, seed=3))
    assert kwargs["top_k"] == -1  # vLLM's "off"
    assert kwargs["stop"] == ["END"]
    assert (kwargs["ignore_eos"], kwargs["seed"]) == (True, 3)


def test_beam_search_maps_onto_vllm_beam_search_params():
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    kwargs = vllm_beam_kwargs(params, BeamSearch(width=4, n=2, length_penalty=0.5))
    assert kwargs == {
        "beam_width": 4,
        "max_tokens": 12,
        "ignore_eos": True,
        "temperature": 0.0,
        "length_penalty": 0.5,
    }


def test_logprobs_map_onto_vllm_logprobs():
    assert vllm_sampling_kwargs(SamplingParams(logprobs=3))["logprobs"] == 3
    assert vllm_sampling_kwargs(SamplingParams(logprobs=0))["logprobs"] == 0
    assert vllm_sampling_kwargs(SamplingParams())["logprobs"] is None


@pytest.mark.parametrize(
    ("guide", "fields"),
    [
        (Guide("json_schema", '{"type": "object"}'), {"json": {"type": "object"}}),
        (Guide("json_object", ""), {"json_object": True}),
        (Guide("regex", "[a-z]+"), {"regex": "[a-z]+"}),
        (Guide("choice", json.dumps(["yes", "no"])), {"choice": ["yes", "no"]}),
        (Guide("grammar", 'start: "a"'), {"grammar": 'start: "a"'}),
    ],
)
def test_each_guide_kind_maps_onto_one_structured_output_field(guide, fields):
    assert structured_output_fields(guide) == fields


class Recorder:
    """Stands in for vLLM's parameter class: keeps the keyword arguments it was built with."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


def test_new_vllm_takes_structured_outputs_and_old_vllm_guided_decoding():
    guide = Guide("regex", "[0-9]+")
    new = structured_output_kwargs(guide, SimpleNamespace(StructuredOutputsParams=Recorder))
    assert list(new) == ["structured_outputs"]
    assert new["structured_outputs"].kwargs == {"regex": "[0-9]+"}
    old = structured_output_kwargs(guide, SimpleNamespace(GuidedDecodingParams=Recorder))
    assert list(old) == ["guided_decoding"]
    assert old["guided_decoding"].kwargs == {"regex": "[0-9]+"}


def test_a_schema_that_is_not_json_is_refused_naming_the_field():
    with pytest.raises(InvalidRequest) as caught:
        structured_output_fields(Guide("json_schema", "{nope", field="guided_json"))
    assert caught.value.field == "guided_json"


def test_vllm_logprob_maps_become_token_logprobs_sorted_by_rank():
    def lp(value, rank):
        return SimpleNamespace(logprob=value, rank=rank, decoded_token="x")

    # vLLM returns the k most likely and the sampled token, here 7, ranked 5th.
    entries = [{4: lp(-0.5, 2), 9: lp(-0.2, 1), 7: lp(-3.0, 5)}, {4: lp(-0.1, 1), 9: lp(-2.5, 2)}]
    assert delta_logprobs(entries, [7, 4], 2) == (
        TokenLogprob(7, -3.0, ((9, -0.2), (4, -0.5))),
        TokenLogprob(4, -0.1, ((4, -0.1), (9, -2.5))),
    )
    assert delta_logprobs(entries, [7, 4], None) == ()


@pytest.mark.vllm
@pytest.mark.gpu
async def test_vllm_generates_paris(model_cache_dir):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (pip install '.[vllm]' on a CUDA machine)")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("vllm needs a CUDA GPU; none is visible")
    from inference.engines import create_engine
    from inference.engines.base import GenerationRequest

    engine = create_engine(
        EngineConfig("smollm2-135m-instruct", device="cuda", cache_dir=str(model_cache_dir)), backend="vllm"
    )
    prompt = engine.render_chat([{"role": "user", "content": "What is the capital of France?"}])
    request = GenerationRequest("v1", engine.tokenize(prompt), SamplingParams(temperature=0, max_tokens=16))
    text = "".join([d.text async for d in engine.generate(request)])
    assert "Paris" in text


def test_a_prefill_asks_vllm_for_one_token_and_a_cache_kept_for_a_remote_decode():
    kwargs = prefill_kwargs(vllm_sampling_kwargs(SamplingParams(max_tokens=200, temperature=0)))
    assert kwargs["max_tokens"] == 1
    assert kwargs["extra_args"] == {
        "kv_transfer_params": {
            "do_remote_decode": True,
            "do_remote_prefill": False,
            "remote_engine_id": None,
            "remote_block_ids": None,
            "remote_host": None,
            "remote_port": None,
        }
    }


def test_the_decode_continues_from_the_prefill_instances_transfer_parameters():
    returned = {
        "do_remote_prefill": True,
        "remote_engine_id": "e1",
        "remote_block_ids": [3, 4],
        "remote_port": 5600,
    }
    blob = handoff_bytes(returned)
    kwargs = decode_kwargs(vllm_sampling_kwargs(SamplingParams(max_tokens=200)), handoff_transfer(blob))
    assert kwargs["max_tokens"] == 200
    assert kwargs["extra_args"] == {"kv_transfer_params": returned}
    with pytest.raises(HandoffRefused, match="kv-transfer-config"):
        handoff_bytes(None)
    with pytest.raises(HandoffRefused):
        handoff_transfer(b"[1, 2]")
    with pytest.raises(HandoffRefused):
        handoff_transfer(b"not json")
