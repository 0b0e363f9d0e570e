"""The vLLM engine: vLLM's `AsyncLLM` behind our Engine contract (optional extra).

vLLM batches, pages the KV cache and schedules on its own; this module only
maps our knobs onto `AsyncEngineArgs`, our `SamplingParams` onto
`vllm.SamplingParams` (a guide onto its structured-output parameters:
`StructuredOutputsParams` since vLLM 0.10.2, `GuidedDecodingParams` before),
and vLLM's `RequestOutput`s onto `Delta`s. `AsyncLLM` (vLLM's V1 engine) is
asked for DELTA outputs, each carrying only what is new; a release without it
falls back to `AsyncLLMEngine`, whose outputs are cumulative.
Install with `pip install .[vllm]` on a CUDA machine. The serving knobs that
have no `EngineConfig` field (`runworker --tensor-parallel-size`,
`--quantization`, `--gpu-memory-utilization`, `--max-num-batched-tokens`,
`--enable-prefix-caching`, `--kv-transfer-config`) come through `EngineConfig.extra`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from inference.engines.admission import Admission
from inference.engines.base import (
    Beam,
    BeamSearch,
    Delta,
    Engine,
    EngineConfig,
    EngineStats,
    GenerationRequest,
    ModelInfo,
    TokenLogprob,
    Usage,
)
from inference.engines.checks import check_generation
from inference.engines.rate import TokenRate
from inference.errors import HandoffRefused, InvalidRequest, ModelLoadError
from inference.sampling import Guide, SamplingParams
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
    "kv_transfer_config",
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
        "logprobs": params.logprobs,  # vLLM's default logprobs are the raw model's, as ours
    }


def structured_output_fields(guide: Guide) -> dict[str, Any]:
    """A guide as the one field vLLM's structured-output parameters take (the same in both APIs)."""
    try:
        if guide.kind == "json_schema":
            return {"json": json.loads(guide.spec)}
        if guide.kind == "json_object":
            return {"json_object": True}
        if guide.kind == "choice":
            return {"choice": list(json.loads(guide.spec))}
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"'{guide.field}' is not valid JSON: {exc}", field=guide.field) from exc
    if guide.kind in ("regex", "grammar"):
        return {guide.kind: guide.spec}
    raise InvalidRequest(f"Unknown structured output kind {guide.kind!r}.", field=guide.field)


def structured_output_kwargs(guide: Guide, vllm_sampling: Any) -> dict[str, Any]:
    """The `vllm.SamplingParams` keyword for `guide`, for the vLLM release in `vllm_sampling` (its module)."""
    fields = structured_output_fields(guide)
    if hasattr(vllm_sampling, "StructuredOutputsParams"):
        return {"structured_outputs": vllm_sampling.StructuredOutputsParams(**fields)}
    return {"guided_decoding": vllm_sampling.GuidedDecodingParams(**fields)}


def delta_logprobs(
    entries: Sequence[dict[int, Any] | None] | None, token_ids: Sequence[int], k: int | None
) -> tuple[TokenLogprob, ...]:
    """vLLM's per-token {id: Logprob} maps (the chosen token and the top k by rank) as TokenLogprobs."""
    if k is None or not entries:
        return ()
    result = []
    for token_id, entry in zip(token_ids, entries, strict=False):
        entry = entry or {}
        ranked = sorted((lp.rank, tid, lp.logprob) for tid, lp in entry.items() if lp.rank is not None)
        top = tuple((tid, float(logprob)) for rank, tid, logprob in ranked if rank <= k)
        chosen = entry.get(token_id)
        result.append(TokenLogprob(token_id, float(chosen.logprob) if chosen else float("nan"), top))
    return tuple(result)


# What vLLM's disaggregation proxy asks of a prefill instance: compute the KV cache, keep it for a
# remote decode, and answer one token with the parameters the decode instance needs to fetch it.
PREFILL_TRANSFER = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}


def prefill_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`vllm.SamplingParams` keyword arguments of a request's prefill on a prefill instance."""
    return {**kwargs, "max_tokens": 1, "extra_args": {"kv_transfer_params": dict(PREFILL_TRANSFER)}}


def handoff_bytes(kv_transfer_params: dict[str, Any] | None) -> bytes:
    """A prefill instance's answer as the hand-off a decode worker receives (vLLM moves the KV itself)."""
    if not kv_transfer_params:
        raise HandoffRefused("vLLM returned no kv_transfer_params: is --kv-transfer-config set?")
    return json.dumps(kv_transfer_params).encode()


def decode_kwargs(kwargs: dict[str, Any], handoff: bytes) -> dict[str, Any]:
    """`vllm.SamplingParams` keyword arguments that decode from a prefill instance's KV cache."""
    try:
        params = json.loads(handoff)
    except ValueError:
        raise HandoffRefused("Not a vLLM hand-off.") from None
    if not isinstance(params, dict):
        raise HandoffRefused("Not a vLLM hand-off.")
    return {**kwargs, "extra_args": {"kv_transfer_params": params}}


def vllm_beam_kwargs(params: SamplingParams, beam: BeamSearch) -> dict[str, Any]:
    """BeamSearchParams fields: vLLM beams of `beam.width`, scored with its length penalty."""
    return {
        "beam_width": beam.width,
        "max_tokens": params.max_tokens,
        "ignore_eos": params.ignore_eos,
        "temperature": params.temperature,
        "length_penalty": beam.length_penalty,
    }


class OutputReader:
    """Turns one request's `RequestOutput`s into Deltas: DELTA outputs as they are, cumulative ones sliced.

    Tokens whose output added no text yet (part of a multi-byte character) are held and sent with the
    next text, so that a Delta's tokens always match its text.
    """

    def __init__(self, *, prompt_tokens: int, logprobs: int | None, cumulative: bool) -> None:
        self.prompt_tokens = prompt_tokens
        self.logprobs = logprobs
        self.cumulative = cumulative
        self.sent_text = self.sent_tokens = 0  # cumulative outputs: how much was read already
        self.generated = 0
        self.finished = False
        self._held_ids: list[int] = []
        self._held_logprobs: list[TokenLogprob] = []

    def read(self, output: Any) -> Delta | None:
        completion = output.outputs[0]
        ids, text, entries = list(completion.token_ids), completion.text, completion.logprobs or []
        if self.cumulative:
            ids, text, entries = ids[self.sent_tokens :], text[self.sent_text :], entries[self.sent_tokens :]
            self.sent_text, self.sent_tokens = len(completion.text), len(completion.token_ids)
        self.generated += len(ids)
        self._held_ids.extend(ids)
        self._held_logprobs.extend(delta_logprobs(entries, ids, self.logprobs))
        reason = completion.finish_reason if output.finished else None
        self.finished = reason is not None
        if not (text or self.finished):
            return None
        usage = Usage(self.prompt_tokens, self.generated) if self.finished else None
        delta = Delta(text, tuple(self._held_ids), reason, usage, tuple(self._held_logprobs))
        self._held_ids, self._held_logprobs = [], []
        return delta


def load_async_engine(args: Any) -> tuple[Any, bool]:
    """vLLM's async engine for `args` and whether its outputs are cumulative (the old engine's are)."""
    try:
        from vllm.v1.engine.async_llm import AsyncLLM
    except ImportError:
        from vllm import AsyncLLMEngine

        return AsyncLLMEngine.from_engine_args(args), True
    return AsyncLLM.from_engine_args(args), False


class VllmEngine(Engine):
    """Serve a causal LM through vLLM (CUDA)."""

    def __init__(self, config: EngineConfig, *, folder: Path, default_name: str) -> None:
        try:
            from transformers import AutoTokenizer
            from vllm import AsyncEngineArgs
        except ImportError as exc:
            raise ModelLoadError("The vllm backend needs vLLM: pip install '.[vllm]'") from exc
        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        kwargs = engine_args_kwargs(config, folder)
        if "kv_transfer_config" in kwargs:
            from vllm.config import KVTransferConfig

            kwargs["kv_transfer_config"] = KVTransferConfig(**kwargs["kv_transfer_config"])
        args = AsyncEngineArgs(**kwargs)
        self.engine, self.cumulative = load_async_engine(args)
        self.info = ModelInfo(
            task="generate",
            backend="vllm",
            device="cuda",
            max_model_len=int(args.max_model_len or self.tokenizer.model_max_length),
            default_name=default_name,
            has_chat_template=bool(getattr(self.tokenizer, "chat_template", None)),
            vocab_size=len(self.tokenizer),  # vLLM refuses ids past the tokenizer's, mid-request
            disaggregates="kv_transfer_config" in config.extra,  # its connector moves the KV cache
        )
        self.admission = Admission(config.max_concurrency, config.max_queue, config.queue_timeout)
        self.rate = TokenRate()

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        return render_chat(self.tokenizer, messages, tools)

    def token_text(self, token_id: int) -> str:
        return str(
            self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        )

    def _sampling_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        from vllm import sampling_params as vllm_sampling

        kwargs = vllm_sampling_kwargs(params)
        if params.guide is not None:
            try:
                kwargs.update(structured_output_kwargs(params.guide, vllm_sampling))
            except ValueError as exc:  # vLLM's own validation of the spec
                raise InvalidRequest(str(exc).splitlines()[0], field=params.guide.field) from exc
        return kwargs

    async def prefill(self, request: GenerationRequest) -> bytes:
        """One token, its KV cache kept for a decode instance; the hand-off is vLLM's transfer parameters."""
        from vllm import SamplingParams as VllmSamplingParams

        check_generation(request, self.info)
        sampling = VllmSamplingParams(**prefill_kwargs(self._sampling_kwargs(request.params)))
        inputs = {"prompt_token_ids": list(request.prompt_token_ids)}
        final = None
        async with self.admission.slot():
            async for output in self.engine.generate(inputs, sampling, request.request_id):
                final = output
        return handoff_bytes(getattr(final, "kv_transfer_params", None))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm import sampling_params as vllm_sampling

        check_generation(request, self.info)
        params = request.params
        prompt = len(request.prompt_token_ids)
        kwargs = self._sampling_kwargs(params)
        if request.handoff is not None:
            kwargs = decode_kwargs(kwargs, request.handoff)
        if not self.cumulative:
            kwargs["output_kind"] = vllm_sampling.RequestOutputKind.DELTA
        sampling = VllmSamplingParams(**kwargs)
        inputs = {"prompt_token_ids": list(request.prompt_token_ids)}
        reader = OutputReader(prompt_tokens=prompt, logprobs=params.logprobs, cumulative=self.cumulative)
        async with self.admission.slot():
            try:
                async for output in self.engine.generate(inputs, sampling, request.request_id):
                    before = reader.generated
                    delta = reader.read(output)
                    self.rate.add(reader.generated - before)
                    if delta is not None:
                        yield delta
            except ValueError as exc:
                # vLLM checks a grammar when the request is added, before any output.
                if params.guide is None or reader.generated:
                    raise
                raise InvalidRequest(str(exc).splitlines()[0], field=params.guide.field) from exc
            finally:
                if not reader.finished:
                    await self.engine.abort(request.request_id)

    async def beam_search(self, request: GenerationRequest, beam: BeamSearch) -> list[Beam]:
        """vLLM's beam search (`EngineClient.beam_search`); releases without it refuse the request."""
        from vllm.sampling_params import BeamSearchParams

        search = getattr(self.engine, "beam_search", None)
        if search is None:
            raise InvalidRequest(
                "This vLLM release has no engine-level beam search.", field="use_beam_search"
            )
        params = BeamSearchParams(**vllm_beam_kwargs(request.params, beam))
        final = None
        async for output in search(
            {"prompt_token_ids": list(request.prompt_token_ids)}, request.request_id, params
        ):
            final = output
        outputs = final.outputs[: beam.n] if final is not None else []
        return [
            Beam(o.text, tuple(o.token_ids), float(o.cumulative_logprob or 0.0), o.finish_reason or "stop")
            for o in outputs
        ]

    async def abort(self, request_id: str) -> bool:
        await self.engine.abort(request_id)
        return True

    def stats(self) -> EngineStats:
        return EngineStats(self.admission.running, self.admission.waiting, self.rate.per_second())
