"""Our requests as vLLM's arguments, and vLLM's answers and errors as ours (pure, testable without vLLM).

Written against vLLM 0.10.2 to 0.34, read from their source (vLLM has not run
here); where releases differ, the function says which does what. vllm itself
is imported only inside the functions that need a class of it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inference.engines.base import Delta, EngineConfig, TokenLogprob, Usage
from inference.errors import HandoffRefused, InvalidRequest
from inference.sampling import Guide, SamplingParams

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
# Our sampling fields; a vLLM validation error whose `parameter` is one of them names it for the client.
SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SamplingParams)) - {"guide"}
LOOPBACK_HOSTS = ("localhost", "::1")


def engine_args_kwargs(config: EngineConfig, folder: Path) -> dict[str, Any]:
    """The `AsyncEngineArgs` keyword arguments for `config`."""
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
    """The `vllm.SamplingParams` keyword for `guide`: `StructuredOutputsParams` since 0.11, before it
    `GuidedDecodingParams` (`vllm_sampling` is the release's `vllm.sampling_params` module)."""
    fields = structured_output_fields(guide)
    if hasattr(vllm_sampling, "StructuredOutputsParams"):
        return {"structured_outputs": vllm_sampling.StructuredOutputsParams(**fields)}
    return {"guided_decoding": vllm_sampling.GuidedDecodingParams(**fields)}


def token_prompt(ids: Sequence[int]) -> Any:
    """Prompt ids in the form vLLM takes without re-rendering or a deprecation warning.

    `vllm.inputs.tokens_input` since 0.19 (a raw dict is "deprecated" there and goes through the
    renderer again); `TokensPrompt` before it.
    """
    try:
        from vllm.inputs import tokens_input
    except ImportError:
        from vllm.inputs import TokensPrompt

        return TokensPrompt(prompt_token_ids=list(ids))
    return tokens_input(list(ids))


def client_error_types() -> tuple[type[Exception], ...]:
    """What vLLM raises for a request's own fault: `VLLMClientError` since 0.27, `ValueError` before.

    Since 0.27 `VLLMValidationError` derives from `VLLMClientError(VLLMError(Exception))` and no
    longer from ValueError (bad regexes, grammars and schemas, over-long prompts, bad values).
    """
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:
        return (ValueError,)
    return (VLLMClientError, ValueError)


def invalid_request(exc: Exception, params: SamplingParams) -> InvalidRequest:
    """vLLM's refusal as our 400: named by vLLM's `parameter` when it is one of our fields, else by the
    guide (structured-output specs are what vLLM checks that we do not)."""
    parameter = getattr(exc, "parameter", None)
    field = parameter if parameter in SAMPLING_FIELDS else (params.guide.field if params.guide else None)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InvalidRequest(message, field=field)


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


def handoff_transfer(handoff: bytes) -> dict[str, Any]:
    """The prefill instance's `kv_transfer_params` in a hand-off; HandoffRefused when it is not one."""
    try:
        params = json.loads(handoff)
    except ValueError:
        raise HandoffRefused("Not a vLLM hand-off.") from None
    if not isinstance(params, dict):
        raise HandoffRefused("Not a vLLM hand-off.")
    return params


def decode_kwargs(kwargs: dict[str, Any], transfer: dict[str, Any]) -> dict[str, Any]:
    """`vllm.SamplingParams` keyword arguments that decode from a prefill instance's KV cache."""
    return {**kwargs, "extra_args": {"kv_transfer_params": transfer}}


def loopback_host(kv_transfer_params: dict[str, Any] | None) -> str | None:
    """The host a prefill advertises for its KV cache when only its own machine can reach it.

    NIXL advertises `VLLM_NIXL_SIDE_CHANNEL_HOST`, "localhost" unless set: a decode worker on
    another host then cannot fetch the cache.
    """
    host = str((kv_transfer_params or {}).get("remote_host") or "")
    return host if host in LOOPBACK_HOSTS or host.startswith("127.") else None


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


class OutputReader:
    """Turns one request's DELTA `RequestOutput`s into Deltas.

    Tokens whose output added no text yet (part of a multi-byte character) are held and sent with the
    next text, so that a Delta's tokens always match its text. A finish with reason "error" (vLLM's
    failure of this request, e.g. a KV cache it could not load) gives no Delta: it sets `failed`.
    """

    def __init__(self, *, prompt_tokens: int, logprobs: int | None) -> None:
        self.prompt_tokens = prompt_tokens
        self.logprobs = logprobs
        self.outputs = 0  # RequestOutputs read: any means vLLM's engine took the request
        self.sent = 0  # Deltas returned
        self.generated = 0
        self.finished = self.failed = False
        self.kv_transfer_params: dict[str, Any] | None = None  # a prefill's, from its last output
        self._held_ids: list[int] = []
        self._held_logprobs: list[TokenLogprob] = []

    def read(self, output: Any) -> Delta | None:
        self.outputs += 1
        completion = output.outputs[0]
        ids, text = list(completion.token_ids), completion.text
        self.generated += len(ids)
        self._held_ids.extend(ids)
        self._held_logprobs.extend(delta_logprobs(completion.logprobs or [], ids, self.logprobs))
        reason = completion.finish_reason if output.finished else None
        self.finished = reason is not None
        if self.finished:
            self.kv_transfer_params = getattr(output, "kv_transfer_params", None)
        if reason == "error":
            self.failed = True
            return None
        if not (text or self.finished):
            return None
        usage = Usage(self.prompt_tokens, self.generated) if self.finished else None
        delta = Delta(text, tuple(self._held_ids), reason, usage, tuple(self._held_logprobs))
        self._held_ids, self._held_logprobs = [], []
        self.sent += 1
        return delta
