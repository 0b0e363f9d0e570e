"""The llama.cpp engine: llama.cpp's own server loop, in process, through xllamacpp.

Why xllamacpp rather than llama-cpp-python: it wraps llama.cpp's C++ server
(continuous batching over `n_parallel` slots, prompt cache, llguidance
grammars), ships prebuilt CPU wheels, and releases the GIL while it works;
llama-cpp-python would leave the batching to us and builds from source.

Each request calls `Server.handle_completions` in a thread of its own with
our prompt's token ids; llama.cpp streams OpenAI completion chunks into a
callback, which hands them to the event loop and returns True to cancel the
request (abort, or a stop token). Tokenising, the chat template and tool
prompts stay ours (the model's Hugging Face tokenizer, read without torch by
`inference.tokenizer`), so every engine renders the same prompt. A grammar
is compiled by our llguidance first, so that a spec that does not compile
is refused before a slot, naming its field. The portable wheel has
llguidance inside and is sent the grammar as Lark; a build without it (the
native one, `llamacpp_build`) is sent GBNF (`inference.engines.gbnf`), and a
grammar llama.cpp cannot parse fails its request: never generated without
its grammar.

llama.cpp's HTTP listener (which xllamacpp always starts, on loopback) is
locked with a random API key: the worker's own HTTP app, behind WORKER_TOKEN,
stays the only way in.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from inference.engines import llamacpp_build
from inference.engines.admission import Admission
from inference.engines.base import (
    Delta,
    EmbeddingResult,
    Engine,
    EngineConfig,
    EngineStats,
    GenerationRequest,
    ModelInfo,
    TokenLogprob,
    Usage,
)
from inference.engines.checks import check_generation, check_token_ids
from inference.engines.gbnf import gbnf_text
from inference.engines.guided import GrammarCompiler, lark_text
from inference.engines.rate import TokenRate
from inference.errors import InvalidRequest, ModelLoadError, RequestFailed, WrongTask
from inference.loading import gguf_limits
from inference.sampling import Guide, SamplingParams
from inference.templates import render_chat
from inference.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)
# Idle slots' prompts kept in host memory (llama.cpp's default: 8 GiB). The slots' own KV cache already
# holds the recent prompts; this second tier stays small so that several workers fit a small machine.
PREFIX_CACHE_MB = 128
M_MMAP_THRESHOLD, MMAP_THRESHOLD = -3, 1 << 20  # glibc's mallopt parameter, and its value
SEED_MODULUS = 2**32 - 1  # llama.cpp seeds are uint32; 0xFFFFFFFF means "random"


def fix_mmap_threshold() -> None:
    """Blocks of 1 MiB or more are mmapped, and so go back to the system when freed (glibc on Linux).

    glibc raises its mmap threshold to the size of each mmapped block freed, up to 32 MiB: once
    llama.cpp's prompt cache evicted its first entry, new entries (a few MiB each) came from the
    heap, whose holes are not handed back, and a worker whose cache was full still grew by 0.2–0.7
    MiB a minute. Setting the threshold turns that rise off (soak: flat, and 40 MiB smaller).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def default_threads() -> int:
    """All cores: llama.cpp's threads sleep between steps; the event loop needs little (measured)."""
    return max(1, os.cpu_count() or 1)


def completion_body(
    request: GenerationRequest, top_logprobs: int, reuse_prompts: bool = True, grammar: str = ""
) -> dict[str, Any]:
    """The llama.cpp completion request for `request` (pure: unit-tested without llama.cpp).

    Every sampler is set, because llama.cpp's defaults differ from the
    OpenAI ones we promise (top_k 40, top_p 0.95, min_p 0.05, penalties over
    the last 64 tokens only). Each chunk's token ids come in its `__verbose`
    part (`verbose`; `response_fields` keeps the final chunk's to the ids),
    which is how stop token ids and the usage of a cancelled request are
    known. Logprobs are asked for only when the client asked (`top_logprobs`
    is then at least 1, for the chosen token's own): with any, llama.cpp
    sorts the whole vocabulary for every token, and at temperature 0 it
    samples greedily only without them (16 slots here: 182 → 230 tokens/s).
    """
    params: SamplingParams = request.params
    body: dict[str, Any] = {
        "prompt": list(request.prompt_token_ids),
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "min_p": params.min_p,
        "repeat_penalty": params.repetition_penalty,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        # Penalties see every token of the request, as vLLM's do.
        "repeat_last_n": len(request.prompt_token_ids) + params.max_tokens,
        "stop": list(params.stop),
        "ignore_eos": params.ignore_eos,
        "logprobs": top_logprobs,
        "verbose": True,
        "response_fields": ["tokens"],
        "stream": True,
        # --prefix-cache-mb 0 turns reuse off, a slot's own prompt too.
        # A cached prompt is evaluated along another path (its last token alone) whose logits
        # differ in the last bits, enough to change a sample: a seeded request repeats only without it.
        "cache_prompt": reuse_prompts and params.seed is None,
    }
    if params.seed is not None:
        body["seed"] = params.seed % SEED_MODULUS
    if grammar:
        body["grammar"] = grammar
    return body


class LlamaCppEngine(Engine):
    """Serve a GGUF model with llama.cpp's server loop, `max_concurrency` slots sharing one KV cache."""

    def __init__(
        self, config: EngineConfig, *, gguf: Path, folder: Path, default_name: str, task: str = "generate"
    ) -> None:
        try:
            import xllamacpp
        except ImportError as exc:
            raise ModelLoadError("--backend llamacpp needs xllamacpp: pip install xllamacpp") from exc
        self.config = config
        self.tokenizer: Any = None  # an encoder GGUF on its own: llama.cpp tokenises its inputs
        if folder.is_dir():
            try:
                self.tokenizer = load_tokenizer(folder)
            except (OSError, ValueError) as exc:
                raise ModelLoadError(
                    f"Could not load the tokenizer of {folder}: {exc}".splitlines()[0]
                ) from exc
        model_config = gguf_limits(gguf)
        limit = int(model_config.get("max_position_embeddings") or 2048)
        if config.max_model_len:
            limit = min(limit, config.max_model_len)
        threads = int(config.extra.get("threads") or default_threads())
        params = xllamacpp.CommonParams()
        params.model.path = str(gguf)
        params.n_parallel = config.max_concurrency
        # One KV cache of one full context, shared by the slots (llama.cpp's own default):
        # each request may use the whole context; together they share its memory.
        params.n_ctx = limit
        params.kv_unified = True
        # Prompts of idle slots are kept in host memory up to this (llama.cpp's default is 8 GiB).
        params.cache_ram_mib = config.prefix_cache_mib(PREFIX_CACHE_MB)
        self.reuse_prompts = params.cache_ram_mib > 0  # --prefix-cache-mb 0: no slot reuses a prompt
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        if task == "embed":  # a sentence encoder sees each input whole, in one batch
            params.embedding = True
            params.n_batch = params.n_ubatch = limit
        params.api_keys = [secrets.token_urlsafe(32)]
        params.verbosity = 0
        fix_mmap_threshold()
        try:
            self.server = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise ModelLoadError(f"llama.cpp could not load {gguf}: {exc}".splitlines()[0]) from exc
        self.vocab_size = int(model_config["vocab_size"])
        self.build = llamacpp_build.loaded()
        # The portable wheel reads llguidance's Lark; a build without llguidance, GBNF only.
        self.llguidance = xllamacpp.json_schema_to_grammar({"type": "object"}).startswith("%llguidance")
        self._schema_to_grammar = xllamacpp.json_schema_to_grammar
        self.info = ModelInfo(
            task=task,
            backend="llamacpp",
            device="cpu",
            max_model_len=limit,
            default_name=default_name,
            has_chat_template=task == "generate" and bool(getattr(self.tokenizer, "chat_template", None)),
            vocab_size=min(self.vocab_size, len(self.tokenizer)) if self.tokenizer else self.vocab_size,
            detail=f"{gguf.name}, {threads} threads",
            build=self.build.label,
        )
        # The slots share one KV cache: each request reserves its prompt and max_tokens of it,
        # so that an admitted request never runs out of cache halfway (llama.cpp would fail it).
        self.admission = Admission(
            config.max_concurrency, config.max_queue, config.queue_timeout, token_budget=limit
        )
        self.grammars: GrammarCompiler | None = None  # compiles structured outputs (generation only)
        if task == "generate":
            eos = [int(self.tokenizer.eos_token_id)] if self.tokenizer.eos_token_id is not None else []
            self.grammars = GrammarCompiler(self.tokenizer, self.vocab_size, eos)
        # One thread per running request: handle_completions blocks (without the GIL) until it ends.
        self._threads = ThreadPoolExecutor(config.max_concurrency, thread_name_prefix="llamacpp")
        self._known: set[str] = set()  # waiting or running
        self._cancelled: set[str] = set()
        self.rate = TokenRate()

    async def shutdown(self) -> None:
        self._cancelled.update(self._known)
        await asyncio.to_thread(self._threads.shutdown, wait=True)

    def tokenize(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise WrongTask("This model serves embeddings; it does not generate text.", field="model")
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        if self.info.task != "generate":
            raise WrongTask("This model serves embeddings; it does not chat.", field="model")
        return render_chat(self.tokenizer, messages, tools)

    def token_text(self, token_id: int) -> str:
        return str(
            self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        )

    def token_bytes(self, token_id: int) -> bytes:
        return self._grammars().token_bytes(token_id)

    def detokenize(self, token_ids: list[int]) -> str:
        if self.tokenizer is None:
            raise WrongTask("This model serves embeddings; it does not generate text.", field="model")
        check_token_ids(token_ids, self.info.vocab_size or self.vocab_size, "prompt")
        return str(
            self.tokenizer.decode(token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        )

    def _grammars(self) -> GrammarCompiler:
        if self.grammars is None:
            raise WrongTask("This model serves embeddings; it does not generate text.", field="model")
        return self.grammars

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        """Embed `texts` (mean-pooled and normalised by llama.cpp); refuse texts over the model's limit."""
        if self.info.task != "embed":
            return await super().embed(texts)
        if not texts:
            raise InvalidRequest("'input' must not be empty.", field="input")
        inputs: list[Any] = list(texts)
        longest = 0
        if self.tokenizer is not None:
            inputs = [list(self.tokenizer.encode(text)) for text in texts]  # with [CLS] and [SEP]
            longest = max(len(i) for i in inputs)
        if longest > self.info.max_model_len:  # refuse rather than embed a truncated text
            raise InvalidRequest(
                f"An input has {longest} tokens; this model embeds at most {self.info.max_model_len}.",
                field="input",
            )
        async with self.admission.slot(longest):
            answer = await asyncio.to_thread(self.server.handle_embeddings, {"input": inputs})
        if "data" not in answer:
            error = answer.get("error", answer)
            message = error.get("message", error) if isinstance(error, dict) else error
            raise InvalidRequest(f"llama.cpp could not embed the input: {message}", field="input")
        rows = sorted(answer["data"], key=lambda row: row["index"])
        tokens = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
        self.rate.add(tokens)
        return EmbeddingResult([[float(x) for x in row["embedding"]] for row in rows], tokens)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if self.info.task != "generate":
            raise WrongTask("This model serves embeddings; it does not generate text.", field="model")
        check_generation(request, self.info)  # before a slot: a bad request fails alone
        guide = request.params.guide
        grammar = ""
        if guide is not None:  # refused here if it does not compile, before a slot
            grammar = await asyncio.to_thread(self.grammar_for, guide)
        rid = request.request_id
        self._known.add(rid)
        try:
            async with self.admission.slot(len(request.prompt_token_ids) + request.params.max_tokens):
                if rid in self._cancelled:  # aborted while it waited
                    yield Delta("", finish_reason="abort", usage=Usage(len(request.prompt_token_ids), 0))
                    return
                async for delta in self._run(request, grammar):
                    yield delta
        finally:
            self._known.discard(rid)
            self._cancelled.discard(rid)

    def grammar_for(self, guide: Guide) -> str:
        """The grammar llama.cpp is sent for `guide`: Lark where it has llguidance, else GBNF.

        Compiled by our llguidance either way, so that a broken spec is refused
        here with the field's name (InvalidRequest).
        """
        self._grammars().compile(guide)
        return lark_text(guide) if self.llguidance else gbnf_text(guide, self._schema_to_grammar)

    async def _run(self, request: GenerationRequest, grammar: str = "") -> AsyncIterator[Delta]:
        """Run the request in a pool thread and relay its chunks; cancel it if the consumer leaves."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | Exception | None] = asyncio.Queue()
        rid = request.request_id
        top_logprobs = 0 if request.params.logprobs is None else max(1, request.params.logprobs)
        body = completion_body(request, top_logprobs, self.reuse_prompts, grammar)

        def hand_over(item: dict[str, Any] | Exception | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the process is ending
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def on_chunk(chunk: dict[str, Any]) -> bool:
            hand_over(chunk)
            return rid in self._cancelled  # True cancels the request in llama.cpp

        def complete() -> None:
            try:
                self.server.handle_completions(body, on_chunk)
            except Exception as exc:  # handed to its request; a pool thread has no one to raise to
                hand_over(exc)
            hand_over(None)

        self._threads.submit(complete)
        reader = ChunkReader(request, self.tokenizer)
        returned = False
        try:
            while True:
                item = await queue.get()
                if item is None:  # returned without a final chunk: cancelled
                    returned = True
                    yield Delta("", finish_reason="abort", usage=reader.usage())
                    return
                if isinstance(item, Exception):
                    raise RequestFailed(f"llama.cpp failed on this request: {item}") from item
                delta = reader.read(item)
                self.rate.add(len(delta.token_ids))
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            if not returned:  # ended early (stop token, error, consumer gone): free the slot
                self._cancelled.add(rid)
                while await queue.get() is not None:
                    pass

    async def abort(self, request_id: str) -> bool:
        if request_id not in self._known:
            return False
        self._cancelled.add(request_id)
        return True

    def stats(self) -> EngineStats:
        return EngineStats(
            in_flight=self.admission.running,
            queued=self.admission.waiting,
            tokens_per_second=self.rate.per_second(),
            kv_cache_usage=self.admission.reserved / self.info.max_model_len,
        )


class ChunkReader:
    """Turns one request's llama.cpp completion chunks into Deltas, counting its tokens."""

    def __init__(self, request: GenerationRequest, tokenizer: Any) -> None:
        self.params = request.params
        self.prompt_tokens = len(request.prompt_token_ids)
        self.stop_ids = set(request.params.stop_token_ids)
        self.tokenizer = tokenizer
        self.streamed = 0

    def usage(self, completion_tokens: int | None = None, cached_tokens: int = 0) -> Usage:
        completion = self.streamed if completion_tokens is None else completion_tokens
        return Usage(self.prompt_tokens, completion, cached_tokens)

    def text(self, ids: tuple[int, ...]) -> str:
        """The text of `ids` as llama.cpp streams it: special tokens left out, spaces as they are."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return str(text)

    def read(self, chunk: dict[str, Any]) -> Delta:
        """One chunk as a Delta; an error chunk raises InvalidRequest (for this request only)."""
        if "error" in chunk or not chunk.get("choices"):
            error = chunk.get("error", chunk)
            message = error.get("message", error) if isinstance(error, dict) else error
            guide = self.params.guide  # a grammar llama.cpp could not parse: the field that sent it
            field = guide.field if guide is not None and "grammar" in str(message) else None
            raise InvalidRequest(f"llama.cpp refused the request: {message}", field=field)
        choice = chunk["choices"][0]
        entries = (choice.get("logprobs") or {}).get("content") or []
        ids = tuple(int(token) for token in (chunk.get("__verbose") or {}).get("tokens") or ())
        text, finish = str(choice.get("text") or ""), choice.get("finish_reason")
        hit = next((i for i, token in enumerate(ids) if token in self.stop_ids), None)
        if hit is not None:  # a stop token ends the answer: billed and listed, as EOS is, but not its text
            ids, entries, finish = ids[: hit + 1], entries[: hit + 1], "stop"
            text = self.text(ids[:hit]) if hit else ""
        self.streamed += len(ids)
        usage = None
        if finish is not None:
            reported = chunk.get("usage") or {}
            completion = reported.get("completion_tokens")
            cached = (reported.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            usage = self.usage(
                None if hit is not None or completion is None else int(completion), int(cached)
            )
        return Delta(text, ids, finish, usage, self._logprobs(entries))

    def _logprobs(self, entries: list[dict[str, Any]]) -> tuple[TokenLogprob, ...]:
        top = self.params.logprobs
        if top is None:
            return ()
        return tuple(
            TokenLogprob(
                int(entry["id"]),
                float(entry["logprob"]),
                tuple((int(t["id"]), float(t["logprob"])) for t in entry.get("top_logprobs", [])[:top]),
            )
            for entry in entries
        )
