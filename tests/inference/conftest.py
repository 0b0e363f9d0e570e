"""Fixtures for the engine tests: the packaged models, loaded once per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import torch

from inference.engines import create_engine, llamacpp_build
from inference.engines.base import Delta, Engine, EngineConfig, GenerationRequest
from inference.loading import convert_gguf, packaged_model_path
from inference.sampling import SamplingParams
from portal import env

# The llama.cpp engine tests run on the build a worker here loads: the native one once it is built.
llamacpp_build.activate(env.LLAMACPP_BUILD_DIR, env.LLAMACPP_NATIVE)


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """The deployment's model cache, so the GGUF conversion happens once per machine, not per run."""
    return env.MODEL_CACHE_DIR


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chat_engine(model_cache_dir: Path) -> AsyncIterator[Engine]:
    config = EngineConfig(
        model_path="smollm2-135m-instruct",
        device="cpu",
        dtype="float32",  # as the reference model: logprobs are compared to its figures
        max_concurrency=8,
        max_queue=8,
        cache_dir=str(model_cache_dir),
    )
    engine = create_engine(config, backend="transformers")
    await engine.start()
    yield engine
    await engine.shutdown()


@pytest.fixture(scope="module")
def reference_model(model_cache_dir: Path) -> Any:
    """SmolLM2 loaded straight from transformers, float32: what the engine's figures are checked against."""
    from transformers import AutoModelForCausalLM

    folder = convert_gguf(packaged_model_path("smollm2-135m-instruct"), cache_dir=model_cache_dir)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


async def collect(engine: Engine, request: GenerationRequest) -> tuple[str, list[Delta]]:
    """Run a request to the end; return its text and every delta."""
    deltas = [delta async for delta in engine.generate(request)]
    return "".join(d.text for d in deltas), deltas


def chat_request(engine: Engine, request_id: str, question: str, **params: object) -> GenerationRequest:
    prompt = engine.render_chat([{"role": "user", "content": question}])
    return GenerationRequest(request_id, engine.tokenize(prompt), SamplingParams(**params))  # type: ignore[arg-type]
