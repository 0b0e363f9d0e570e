"""The vLLM engine: argument mapping everywhere, a real generation where vLLM and a GPU exist."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from inference.engines.base import EngineConfig
from inference.engines.vllm_engine import engine_args_kwargs, vllm_sampling_kwargs
from inference.sampling import SamplingParams


def test_engine_config_maps_onto_vllm_engine_args():
    config = EngineConfig(
        "m", dtype="float16", max_concurrency=32, max_model_len=4096, extra={"quantization": "awq", "x": 1}
    )
    kwargs = engine_args_kwargs(config, Path("/models/m"))
    assert kwargs["model"] == "/models/m"
    assert (kwargs["max_num_seqs"], kwargs["max_model_len"], kwargs["dtype"]) == (32, 4096, "float16")
    assert kwargs["quantization"] == "awq"
    assert "x" not in kwargs


def test_sampling_params_map_onto_vllm_names():
    kwargs = vllm_sampling_kwargs(SamplingParams(top_k=0, stop=("END",), ignore_eos=True, seed=3))
    assert kwargs["top_k"] == -1  # vLLM's "off"
    assert kwargs["stop"] == ["END"]
    assert (kwargs["ignore_eos"], kwargs["seed"]) == (True, 3)


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
