"""The transformers engine: a Hugging Face causal LM behind a continuous-batching loop.

The model runs in the `Batcher` thread; this module is the asyncio side. Each
request passes `Admission`, is checked against the context limit, then joins
the batch; its deltas come back through a small per-request queue fed with
`loop.call_soon_threadsafe`, the way transformers' streamers bridge a
blocking loop to async code. The event loop never runs the model.
A structured-output guide is compiled (in a thread) before admission, so a
schema that does not compile is a 400 for its own request only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import torch

from inference.engines import handoff
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
from inference.engines.batcher import Batcher, Sequence
from inference.engines.checks import check_generation, check_token_ids
from inference.engines.guided import Grammar, GrammarCompiler
from inference.engines.handoff import Handoff
from inference.engines.logits import TokenPicker
from inference.engines.prefills import Prefill
from inference.engines.stops import TextStream
from inference.errors import HandoffRefused, ModelLoadError
from inference.templates import render_chat

logger = logging.getLogger(__name__)
PREFIX_CACHE_MB = 512  # KV blocks of past prompts and answers: this engine's only prefix cache


def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def pick_dtype(requested: str, device: str) -> torch.dtype:
    """bfloat16 on a GPU and on a CPU with native bfloat16 products, float32 on other CPUs.

    On the 2-core AVX512-BF16 dev box bfloat16 served SmolLM2 at 134 tok/s at
    concurrency 16 against float32's 68 (benchmarks/worker_throughput.py).
    """
    if requested == "auto":
        return torch.bfloat16 if device != "cpu" or cpu_has_bf16() else torch.float32
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if requested not in dtypes:
        raise ModelLoadError(
            f"--dtype {requested} is not one transformers serves; choose auto, {', '.join(dtypes)}."
        )
    return dtypes[requested]


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), from Linux's CPU flags."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def configure_threads(config: EngineConfig) -> None:
    """Give torch all cores but one (or `extra["threads"]`).

    The spare core runs the event loop, HTTP and detokenisation. Measured on
    the 2-core dev box: with 2 intra-op threads a batch-16 linear took 5 ms
    (OpenMP threads spinning against the busy loop thread), with 1 thread 0.4 ms.
    """
    threads = int(config.extra.get("threads") or (os.cpu_count() or 2) - 1)
    torch.set_num_threads(max(1, threads))


class TransformersEngine(Engine):
    """Serve a causal LM from a local folder, batching concurrent requests."""

    def __init__(self, config: EngineConfig, *, folder: Path, default_name: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        device = pick_device(config.device)
        configure_threads(config)
        dtype = pick_dtype(config.dtype, device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            model: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
            self.model = model.to(device)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Could not load {folder}: {exc}".splitlines()[0]) from exc
        self.model.eval()
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        # Prompt ids index the input embeddings: an id past them is an IndexError mid-batch.
        accepted = min(self.vocab_size, int(self.model.get_input_embeddings().weight.shape[0]))
        limit = int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)
        if config.max_model_len:
            limit = min(limit, config.max_model_len)
        self.info = ModelInfo(
            task="generate",
            backend="transformers",
            device=device,
            max_model_len=limit,
            default_name=default_name,
            has_chat_template=bool(getattr(self.tokenizer, "chat_template", None)),
            vocab_size=accepted,
            detail=f"{str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} threads",
            disaggregates=True,
        )
        self.admission = Admission(config.max_concurrency, config.max_queue, config.queue_timeout)
        self.batcher = Batcher(
            self.model,
            _eos_ids(self.model, self.tokenizer),
            keep_tokens=limit,
            prefix_cache_bytes=config.prefix_cache_mib(PREFIX_CACHE_MB) * 2**20,
        )
        self.grammars = GrammarCompiler(self.tokenizer, self.vocab_size, self.batcher.stop_ids)
        self._waiting: set[str] = set()
        self._aborted_waiting: set[str] = set()

    async def start(self) -> None:
        self.batcher.start()

    async def shutdown(self) -> None:
        await asyncio.to_thread(self.batcher.stop)

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        return render_chat(self.tokenizer, messages, tools)

    def token_text(self, token_id: int) -> str:
        return str(
            self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        )

    def token_bytes(self, token_id: int) -> bytes:
        return self.grammars.token_bytes(token_id)

    def detokenize(self, token_ids: list[int]) -> str:
        check_token_ids(token_ids, self.info.vocab_size or self.vocab_size, "prompt")
        return str(
            self.tokenizer.decode(token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        )

    def _decode(self, token_ids: list[int]) -> str:
        # No clean-up of spaces: it may rewrite text already streamed ("a ." -> "a.") and
        # break the prefix property incremental detokenisation relies on.
        return str(
            self.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        check_generation(request, self.info)  # before a slot: a bad request fails alone
        guide = request.params.guide
        # Compiling takes milliseconds (the first one builds llguidance's tokenizer, ~1 s): off the loop.
        grammar = await asyncio.to_thread(self.grammars.compile, guide) if guide else None
        self._waiting.add(request.request_id)
        try:
            async with self.admission.slot():
                self._waiting.discard(request.request_id)
                if request.request_id in self._aborted_waiting:
                    self._aborted_waiting.discard(request.request_id)
                    yield Delta("", finish_reason="abort", usage=Usage(len(request.prompt_token_ids), 0))
                    return
                async for delta in self._run(request, grammar):
                    yield delta
        finally:
            self._waiting.discard(request.request_id)
            self._aborted_waiting.discard(request.request_id)

    def _submit(
        self, request: GenerationRequest, grammar: Grammar | None, **role: Any
    ) -> asyncio.Queue[Delta | Handoff | BaseException]:
        """Put the request into the batch loop; what the loop sends back arrives on the returned queue."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | Handoff | BaseException] = asyncio.Queue()

        def sink(item: Delta | Handoff | BaseException) -> None:
            # The loop may be gone (process shutting down); the batch thread must carry on.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, item)

        params = request.params
        self.batcher.submit(
            Sequence(
                request_id=request.request_id,
                prompt_ids=list(request.prompt_token_ids),
                picker=TokenPicker(params, request.prompt_token_ids, self.vocab_size, grammar),
                stream=TextStream(self._decode, params.stop),
                sink=sink,
                max_new_tokens=params.max_tokens,
                **role,
            )
        )
        return queue

    async def _run(self, request: GenerationRequest, grammar: Grammar | None) -> AsyncIterator[Delta]:
        """Submit to the batch loop and relay its deltas; abort the row if the consumer leaves."""
        # Parsing a hand-off copies megabytes: off the event loop.
        handoff = (
            await asyncio.to_thread(self._check_handoff, request) if request.handoff is not None else None
        )
        queue = self._submit(request, grammar, handoff=handoff)
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                assert isinstance(item, Delta)
                finished = item.finish_reason is not None
                yield item
        finally:
            if not finished:  # the consumer went away: free the batch row
                self.batcher.abort(request.request_id)

    async def prefill(self, request: GenerationRequest) -> bytes:
        """Prefill the prompt beside the batch, draw its first token, and return the rows to decode from."""
        check_generation(request, self.info)
        guide = request.params.guide
        grammar = await asyncio.to_thread(self.grammars.compile, guide) if guide else None
        async with self.admission.slot():
            queue = self._submit(request, grammar, prefill_only=True)
            try:
                item = await queue.get()
            except BaseException:
                self.batcher.abort(request.request_id)
                raise
        if isinstance(item, BaseException):
            raise item
        if not isinstance(item, Handoff):
            raise HandoffRefused(f"The prefill ended without a hand-off ({item.finish_reason}).")
        return await asyncio.to_thread(handoff.dumps, item)

    def _check_handoff(self, request: GenerationRequest) -> Handoff:
        """The request's hand-off if it fits this model and this prompt; HandoffRefused otherwise."""
        assert request.handoff is not None
        config = self.model.config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        width = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        fit = handoff.Fit(
            prompt_ids=list(request.prompt_token_ids),
            layers=config.num_hidden_layers,
            rows=(1, heads, len(request.prompt_token_ids), width),
            dtype=next(self.model.parameters()).dtype,
            vocab_size=self.info.vocab_size or self.vocab_size,
        )
        return handoff.check(handoff.loads(request.handoff), fit)

    async def beam_search(self, request: GenerationRequest, beam: BeamSearch) -> list[Beam]:
        """transformers' own beam search, run alone in the batch thread (the batch waits for it).

        A beam request leaves the continuous batch: beams branch and merge the
        cache in ways a shared left-padded batch does not. It holds one slot.
        Stop strings cut each beam's text where they first appear.
        """
        check_generation(request, self.info)
        async with self.admission.slot():
            job = self.batcher.run_alone(lambda: self._beams(request, beam))
            return await asyncio.wrap_future(job)

    def _beams(self, request: GenerationRequest, beam: BeamSearch) -> list[Beam]:
        params = request.params
        ids = torch.tensor([request.prompt_token_ids], device=self.model.device)
        stops = sorted(self.batcher.stop_ids | set(params.stop_token_ids))
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                num_beams=beam.width,
                num_return_sequences=beam.n,
                max_new_tokens=params.max_tokens,
                length_penalty=beam.length_penalty,
                early_stopping=beam.early_stopping,
                do_sample=False,
                eos_token_id=None if params.ignore_eos else stops,
                pad_token_id=self.tokenizer.pad_token_id or stops[0],
                output_scores=True,
                return_dict_in_generate=True,
            )
        beams = []
        for sequence, score in zip(out.sequences, out.sequences_scores, strict=True):
            tokens = [int(t) for t in sequence[ids.shape[1] :]]
            ended = next((i for i, t in enumerate(tokens) if t in stops), None)
            if ended is not None and not params.ignore_eos:
                tokens = tokens[:ended]
            text = self._decode(tokens)
            cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=None)
            finish = "stop" if ended is not None or cut is not None else "length"
            beams.append(Beam(text if cut is None else text[:cut], tuple(tokens), float(score), finish))
        return beams

    async def prompt_logprobs(self, prompt_token_ids: list[int], top: int) -> list[TokenLogprob]:
        """One forward pass over the prompt, alone in the batch thread (for `echo` with `logprobs`)."""
        check_token_ids(prompt_token_ids, self.info.vocab_size or self.vocab_size, "prompt")
        async with self.admission.slot():
            job = self.batcher.run_alone(lambda: self._prompt_logprobs(prompt_token_ids, top))
            return await asyncio.wrap_future(job)

    def _prompt_logprobs(self, ids: list[int], top: int) -> list[TokenLogprob]:
        from transformers import DynamicCache

        cache = DynamicCache()
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([ids], device=self.model.device), past_key_values=cache, use_cache=True
            )
        logits = out.logits[0].float().cpu()
        # The generation the worker starts next for this prompt joins the batch from this pass.
        self.batcher.kept.keep(ids, Prefill(cache, logits[-1]))
        logprobs = torch.log_softmax(logits[:-1], dim=-1)
        entries = [TokenLogprob(ids[0], float("nan"))]
        for position, token in enumerate(ids[1:]):
            row = logprobs[position]
            best = row.topk(top) if top else None
            pairs = (
                tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True))
                if best is not None
                else ()
            )
            entries.append(TokenLogprob(token, float(row[token]), pairs))
        return entries

    async def abort(self, request_id: str) -> bool:
        if request_id in self._waiting:  # still waiting for a slot: end it as soon as it gets one
            self._aborted_waiting.add(request_id)
            return True
        return self.batcher.abort(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(
            in_flight=self.admission.running,
            queued=self.admission.waiting,
            tokens_per_second=self.batcher.rate.per_second(),
            prefix_cache_tokens=self.batcher.prefixes.tokens,
        )


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a turn: the generation config's EOS list and the tokenizer's EOS."""
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
