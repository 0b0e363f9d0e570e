"""The vLLM engine: vLLM's `AsyncLLMEngine` behind our Engine contract (optional extra).

vLLM batches, pages the KV cache and schedules on its own; this module only
maps our knobs onto `AsyncEngineArgs`, our `SamplingParams` onto
`vllm.SamplingParams`, and vLLM's cumulative `RequestOutput`s onto `Delta`s.
Install with `pip install .[vllm]` on a CUDA machine. Serving knobs that have
no `EngineConfig` field (quantization, gpu_memory_utilization,
max_num_batched_tokens, enforce_eager, ...) pass through `EngineConfig.extra`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from inference.engines.admission import Admission
from inference.engines.base import (
    Delta,
    Engine,
    EngineConfig,
    EngineStats,
    GenerationRequest,
    ModelInfo,
    Usage,
)
from inference.engines.checks import check_generation
from inference.errors import ModelLoadError
from inference.sampling import SamplingParams
from inference.templates import render_chat

ENGINE_ARG_KEYS = (
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "quantization",
    "gpu_memory_utilization",
    "max_num_batched_tokens",
    "enforce_eager",
    "kv_cache_dtype",
    "enable_prefix_caching",
)


def engine_args_kwargs(config: EngineConfig, folder: Path) -> dict[str, Any]:
    """The `AsyncEngineArgs` keyword arguments for `config` (pure: unit-testable without vLLM)."""
    kwargs: dict[str, Any] = {
        "model": str(folder),
        "dtype": config.dtype,
        "max_num_seqs": config.max_concurrency,
        "seed": config.seed or 0,
    }
    if config.max_model_len:
        kwargs["max_model_len"] = config.max_model_len
    kwargs.update({key: config.extra[key] for key in ENGINE_ARG_KEYS if key in config.extra})
    return kwargs


def vllm_sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Our sampling parameters as `vllm.SamplingParams` keyword arguments."""
    return {
        "n": 1,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,
        "min_p": params.min_p,
        "stop": list(params.stop),
        "stop_token_ids": list(params.stop_token_ids),
        "seed": params.seed,
        "repetition_penalty": params.repetition_penalty,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "ignore_eos": params.ignore_eos,
    }


class VllmEngine(Engine):
    """Serve a causal LM through vLLM (CUDA)."""

    def __init__(self, config: EngineConfig, *, folder: Path, default_name: str) -> None:
        try:
            from transformers import AutoTokenizer
            from vllm import AsyncEngineArgs, AsyncLLMEngine
        except ImportError as exc:
            raise ModelLoadError("The vllm backend needs vLLM: pip install '.[vllm]'") from exc
        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        args = AsyncEngineArgs(**engine_args_kwargs(config, folder))
        self.engine = AsyncLLMEngine.from_engine_args(args)
        self.info = ModelInfo(
            task="generate",
            backend="vllm",
            device="cuda",
            max_model_len=int(args.max_model_len or self.tokenizer.model_max_length),
            default_name=default_name,
            has_chat_template=bool(getattr(self.tokenizer, "chat_template", None)),
            vocab_size=len(self.tokenizer),  # vLLM refuses ids past the tokenizer's, mid-request
        )
        self.admission = Admission(config.max_concurrency, config.max_queue, config.queue_timeout)
        self._recent: deque[tuple[float, int]] = deque()

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        return render_chat(self.tokenizer, messages)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        from vllm import SamplingParams as VllmSamplingParams

        check_generation(request, self.info)
        prompt = len(request.prompt_token_ids)
        sampling = VllmSamplingParams(**vllm_sampling_kwargs(request.params))
        inputs = {"prompt_token_ids": list(request.prompt_token_ids)}
        async with self.admission.slot():
            sent_text, sent_tokens, finished = 0, 0, False
            try:
                async for output in self.engine.generate(inputs, sampling, request.request_id):
                    completion = output.outputs[0]
                    ids = tuple(completion.token_ids[sent_tokens:])
                    text = completion.text[sent_text:]
                    sent_text, sent_tokens = len(completion.text), len(completion.token_ids)
                    self._recent.append((time.monotonic(), len(ids)))
                    reason = completion.finish_reason if output.finished else None
                    finished = reason is not None
                    usage = Usage(prompt, sent_tokens) if finished else None
                    if text or finished:
                        yield Delta(text=text, token_ids=ids, finish_reason=reason, usage=usage)
            finally:
                if not finished:
                    await self.engine.abort(request.request_id)

    async def abort(self, request_id: str) -> bool:
        await self.engine.abort(request_id)
        return True

    def stats(self) -> EngineStats:
        now = time.monotonic()
        while self._recent and self._recent[0][0] < now - 10.0:
            self._recent.popleft()
        return EngineStats(
            self.admission.running, self.admission.waiting, sum(n for _, n in self._recent) / 10.0
        )
