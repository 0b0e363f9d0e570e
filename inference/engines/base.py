"""The engine contract: what a worker needs from whatever runs the model.

An engine streams a generation as `Delta`s, embeds a batch of texts, aborts a
request by id and reports its figures. Admission (how many generate at once,
how many may wait, for how long) is the engine's, because it owns the batch.
No Django here: engines are used and tested on their own.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from inference.errors import HandoffRefused
from inference.sampling import SamplingParams


@dataclass(frozen=True)
class EngineConfig:
    """Knobs shared by every engine; `runworker` fills them from its options."""

    model_path: str
    device: str = "auto"  # cpu | cuda | auto
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    max_concurrency: int = 16  # sequences generating at once (the batch)
    max_queue: int = 64  # requests waiting for a slot; beyond it QueueFull at once
    queue_timeout: float = 60.0  # seconds a request may wait for a slot
    max_model_len: int | None = None  # None: the model's own limit
    seed: int | None = None
    cache_dir: str | None = None  # where converted GGUF models are kept; None: ~/.cache/modelportal
    # MiB of prompt prefixes kept across requests; 0: none; None: the engine's default.
    prefix_cache_mb: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific options

    def prefix_cache_mib(self, default: int) -> int:
        """`prefix_cache_mb`, or the engine's `default` where it was not given."""
        return default if self.prefix_cache_mb is None else self.prefix_cache_mb


@dataclass(frozen=True)
class ModelInfo:
    """What an engine serves, as the worker reports it."""

    task: str  # "generate" or "embed"
    backend: str  # "llamacpp", "transformers", "vllm", "canned"
    device: str
    max_model_len: int
    default_name: str  # served name when --model-names is not given
    has_chat_template: bool = True
    vocab_size: int | None = None  # token ids must be below it; None: not checked (canned)
    detail: str = ""  # how it runs, for the start-up line: precision, threads
    build: str = ""  # which build of the engine runs ("llama.cpp native avx512"), registered for the admin
    disaggregates: bool = False  # `prefill` and `generate` from a hand-off: prefill/decode roles


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    # A prefill worker's `Engine.prefill` result for this prompt: decode continues from it.
    handoff: bytes | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens the engine's prefix cache spared it

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability and the `k` most likely tokens at its place.

    Of the model's raw distribution (log_softmax of the logits before
    penalties, temperature or a grammar's mask), as vLLM's default; `top` is
    sorted from the most likely down.
    """

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """New text since the previous delta. The last one has `finish_reason` and `usage`.

    finish_reason: "stop" (EOS, stop string, stop token or a completed
    grammar), "length" (max_tokens or the context limit) or "abort"
    (cancelled). `token_ids` are the tokens generated since the previous
    delta, a stop token (EOS, a stop token id) included: every billed token
    is listed, though a stop token adds no text. `logprobs` has one entry per
    id in `token_ids` when the request asked for them, none otherwise.
    """

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class BeamSearch:
    """Beam search of `width` beams returning the `n` best (scores: logprob sum / length ** penalty)."""

    width: int
    n: int
    length_penalty: float = 1.0
    early_stopping: bool = False


@dataclass(frozen=True)
class Beam:
    """One finished beam: its text, tokens and length-penalised score."""

    text: str
    token_ids: tuple[int, ...]
    score: float
    finish_reason: str


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(frozen=True)
class EngineStats:
    in_flight: int  # generating now
    queued: int  # waiting for a slot
    tokens_per_second: float  # output tokens per second, recent window
    kv_cache_usage: float | None = None  # share of the KV cache in use (0..1); None: not known
    prefix_cache_tokens: int | None = None  # prompt tokens the prefix cache holds; None: not known
    prefix_cache_hit_rate: float | None = (
        None  # the worker's, from its finished requests (WorkerContext.stats)
    )


class Engine(abc.ABC):
    """Base class of the transformers, vLLM and canned-token engines."""

    info: ModelInfo

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Start background machinery (the batching loop); called once on the event loop."""

    async def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Stop background machinery; requests still running end with finish_reason "abort"."""

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` as the model sees it (no special tokens added)."""

    @abc.abstractmethod
    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
        """The prompt for a chat (and the tools it may call), through the chat template or the fallback."""

    def token_text(self, token_id: int) -> str:
        """One token decoded alone, as logprobs show it (may hold U+FFFD for half a character)."""
        raise NotImplementedError(f"{type(self).__name__} does not decode single tokens.")

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes of one token, for logprobs' `bytes`."""
        raise NotImplementedError(f"{type(self).__name__} does not decode single tokens.")

    def detokenize(self, token_ids: list[int]) -> str:
        """The text of token ids, special tokens kept (an echoed token-id prompt)."""
        from inference.errors import InvalidRequest

        raise InvalidRequest(f"{type(self).__name__} does not decode token ids.", field="prompt")

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream the generation; raise QueueFull / QueueTimeout / InvalidRequest before the first delta."""

    async def beam_search(self, request: GenerationRequest, beam: BeamSearch) -> list[Beam]:
        """The `beam.n` best beams for the prompt, best first; this engine may not run beam search."""
        from inference.errors import InvalidRequest

        raise InvalidRequest(f"{type(self).__name__} does not run beam search.", field="use_beam_search")

    async def prompt_logprobs(self, prompt_token_ids: list[int], top: int) -> list[TokenLogprob]:
        """Each prompt token's logprob given the tokens before it (the first has none: NaN)."""
        from inference.errors import InvalidRequest

        raise InvalidRequest(f"{type(self).__name__} does not compute prompt logprobs.", field="echo")

    async def prefill(self, request: GenerationRequest) -> bytes:
        """Prefill the prompt and hand it off: opaque bytes a `generate` of the same model continues from."""
        raise HandoffRefused(f"{type(self).__name__} does not split prefill from decode.")

    async def embed(self, texts: list[str]) -> EmbeddingResult:
        from inference.errors import WrongTask

        raise WrongTask("This model generates text; it does not serve embeddings.", field="model")

    @abc.abstractmethod
    async def abort(self, request_id: str) -> bool:
        """Stop a request; True if it was queued or running."""

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...
