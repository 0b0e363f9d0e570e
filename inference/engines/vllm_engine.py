"""The vLLM engine: vLLM's `AsyncLLM` behind our Engine contract (optional extra, vLLM 0.10.2 to 0.34).

vLLM batches, pages the KV cache and schedules on its own; this module maps
our knobs onto `AsyncEngineArgs`, our requests onto `vllm.SamplingParams` and
token prompts (`vllm_mapping`), asks for DELTA outputs, and turns vLLM's
outputs and client errors into our Deltas and 400s. Beam search is in
`vllm_beam`. The context length is vLLM's own (`model_config.max_model_len`).
Install vLLM on a CUDA machine (the README says which release, and how). The
serving knobs that have no `EngineConfig` field (`runworker
--tensor-parallel-size`, `--quantization`, `--gpu-memory-utilization`,
`--max-num-batched-tokens`, `--enable-prefix-caching`, `--kv-transfer-config`)
come through `EngineConfig.extra`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
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
)
from inference.engines.checks import check_generation
from inference.engines.rate import TokenRate
from inference.engines.vllm_beam import run_beam_search
from inference.engines.vllm_mapping import (
    OutputReader,
    client_error_types,
    decode_kwargs,
    engine_args_kwargs,
    handoff_bytes,
    handoff_transfer,
    invalid_request,
    loopback_host,
    prefill_kwargs,
    structured_output_kwargs,
    token_prompt,
    vllm_sampling_kwargs,
)
from inference.errors import EngineError, HandoffRefused, ModelLoadError
from inference.sampling import SamplingParams
from inference.templates import render_chat

logger = logging.getLogger(__name__)


class VllmEngine(Engine):
    """Serve a causal LM through vLLM (CUDA)."""

    def __init__(self, config: EngineConfig, *, folder: Path, default_name: str) -> None:
        try:
            from transformers import AutoTokenizer
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ModelLoadError("The vllm backend needs vLLM: pip install '.[vllm]'") from exc
        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        kwargs = engine_args_kwargs(config, folder)
        if "kv_transfer_config" in kwargs:
            from vllm.config import KVTransferConfig

            kwargs["kv_transfer_config"] = KVTransferConfig(**kwargs["kv_transfer_config"])
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        self.client_errors = client_error_types()
        self.info = ModelInfo(
            task="generate",
            backend="vllm",
            device="cuda",
            # vLLM's own: --max-model-len, else the model config's (the tokenizer's may say 1e30).
            max_model_len=int(self.engine.model_config.max_model_len),
            default_name=default_name,
            has_chat_template=bool(getattr(self.tokenizer, "chat_template", None)),
            vocab_size=len(self.tokenizer),  # vLLM refuses ids past the tokenizer's, mid-request
            disaggregates="kv_transfer_config" in config.extra,  # its connector moves the KV cache
        )
        self.admission = Admission(config.max_concurrency, config.max_queue, config.queue_timeout)
        self.rate = TokenRate()
        self._warned_loopback = False

    async def shutdown(self) -> None:
        """Stop vLLM's engine-core process and output loop (`AsyncLLM.shutdown` blocks: off the loop)."""
        await asyncio.to_thread(self.engine.shutdown)

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        return render_chat(self.tokenizer, messages, tools)

    def token_text(self, token_id: int) -> str:
        return str(
            self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        )

    def _sampling(
        self, params: SamplingParams, *, prefill: bool = False, decode: dict[str, Any] | None = None
    ) -> Any:
        """`vllm.SamplingParams` for `params` with DELTA outputs, a prefill kept for a remote decode
        or a decode from one (its `kv_transfer_params`); vLLM's checks of them become our 400s."""
        from vllm import SamplingParams as VllmSamplingParams
        from vllm import sampling_params as vllm_sampling

        try:
            kwargs = vllm_sampling_kwargs(params)
            if params.guide is not None:
                kwargs.update(structured_output_kwargs(params.guide, vllm_sampling))
            if prefill:
                kwargs = prefill_kwargs(kwargs)
            if decode is not None:
                kwargs = decode_kwargs(kwargs, decode)
            kwargs["output_kind"] = vllm_sampling.RequestOutputKind.DELTA
            return VllmSamplingParams(**kwargs)
        except self.client_errors as exc:
            raise invalid_request(exc, params) from exc

    async def prefill(self, request: GenerationRequest) -> bytes:
        """One token, its KV cache kept for a decode instance; the hand-off is vLLM's transfer parameters."""
        check_generation(request, self.info)
        sampling = self._sampling(request.params, prefill=True)
        reader = OutputReader(prompt_tokens=len(request.prompt_token_ids), logprobs=None)
        async with self.admission.slot():
            async for _ in self._stream(request, sampling, reader):
                pass
        self._warn_loopback(reader.kv_transfer_params)
        return handoff_bytes(reader.kv_transfer_params)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream the request; a decode whose KV cache vLLM cannot load raises HandoffRefused
        before its first delta (the worker then prefills here), and a decode refused before vLLM
        took it frees the prefill instance's blocks."""
        transfer = handoff_transfer(request.handoff) if request.handoff is not None else None
        reader = OutputReader(prompt_tokens=len(request.prompt_token_ids), logprobs=request.params.logprobs)
        try:
            check_generation(request, self.info)
            sampling = self._sampling(request.params, decode=transfer)
            async with self.admission.slot():
                async for delta in self._stream(request, sampling, reader):
                    yield delta
        except BaseException:
            if transfer is not None and not reader.outputs:
                await self._release_prefill(request.request_id, transfer)
            raise

    async def _stream(
        self, request: GenerationRequest, sampling: Any, reader: OutputReader
    ) -> AsyncIterator[Delta]:
        prompt = token_prompt(request.prompt_token_ids)
        try:
            async for output in self.engine.generate(prompt, sampling, request.request_id):
                before = reader.generated
                delta = reader.read(output)
                self.rate.add(reader.generated - before)
                if reader.failed:
                    raise self._failure(request, reader)
                if delta is not None:
                    yield delta
        except self.client_errors as exc:  # vLLM checks a request when it is added, before any output
            if reader.outputs:
                raise
            raise invalid_request(exc, request.params) from exc
        finally:
            if not reader.finished:
                await self.engine.abort(request.request_id)

    @staticmethod
    def _failure(request: GenerationRequest, reader: OutputReader) -> EngineError:
        """vLLM finished the request with "error": a decode that sent nothing yet falls back to a local
        prefill (a KV load failure under the default `kv_load_failure_policy="fail"`); else a 5xx."""
        if request.handoff is not None and not reader.sent:
            return HandoffRefused("vLLM could not load the prefilled KV cache (finish_reason 'error').")
        return EngineError(f"vLLM ended request {request.request_id} with an error.")

    async def _release_prefill(self, request_id: str, transfer: dict[str, Any]) -> None:
        """Tell vLLM a decode was refused before it took it, so the connector frees the prefill
        instance's blocks now rather than when their lease ends (`notify_kv_transfer_request_rejected`,
        vLLM 0.21 and later, as vLLM's own serving layer does)."""
        notify = getattr(self.engine, "notify_kv_transfer_request_rejected", None)
        if notify is None or not transfer.get("do_remote_prefill"):
            return
        try:
            await notify(request_id, transfer)
        except Exception:
            logger.warning("Could not release the prefill blocks of %s", request_id, exc_info=True)

    def _warn_loopback(self, transfer: dict[str, Any] | None) -> None:
        host = loopback_host(transfer)
        if host is not None and not self._warned_loopback:
            self._warned_loopback = True
            logger.warning(
                "vLLM advertises this prefill's KV cache at %s: decode workers on other hosts cannot "
                "fetch it. Set VLLM_NIXL_SIDE_CHANNEL_HOST to an address they reach.",
                host,
            )

    async def beam_search(self, request: GenerationRequest, beam: BeamSearch) -> list[Beam]:
        """vLLM's beam search in one of our slots (see `vllm_beam` for which release runs which)."""
        check_generation(request, self.info)
        async with self.admission.slot():
            try:
                return await run_beam_search(self.engine, request, beam)
            except self.client_errors as exc:
                raise invalid_request(exc, request.params) from exc

    async def abort(self, request_id: str) -> bool:
        await self.engine.abort(request_id)
        return True

    def stats(self) -> EngineStats:
        return EngineStats(self.admission.running, self.admission.waiting, self.rate.per_second())
