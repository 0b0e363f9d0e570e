"""A stand-in for the `vllm` package, shaped like vLLM's own classes, where vLLM cannot run (no CUDA).

Named as a fake: it runs no model. Each class keeps the module path, names,
signatures and behaviour of the vLLM 0.34 source it stands for, reduced to
what our engine touches; the release argument of `install` brings back the
older releases' differences that our code handles:

- "0.34": `VLLMValidationError(VLLMClientError(VLLMError(Exception)))`, `tokens_input`,
  `BeamSearchOnlineMixin`, `notify_kv_transfer_request_rejected` (vllm/exceptions.py,
  vllm/inputs/engine.py, vllm/entrypoints/generate/beam_search/online.py, vllm/v1/engine/async_llm.py);
- "0.26": the same, but `VLLMValidationError` is a ValueError and `VLLMClientError` does not exist;
- "0.20": no beam search outside vLLM's serving classes;
- "0.11.0": no vllm.exceptions, `TokensPrompt` dicts, `EngineClient.beam_search` on the engine, no notify.

What the fake's generation answers is set on its engine: `answer`, `beams`, `kv_load_fails`,
`prefill_host`; what it was asked is recorded in `added`, `aborted`, `rejected`, `shutdowns`.
"""

from __future__ import annotations

import enum
import json
import re
import sys
import types
from abc import ABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RELEASES = ("0.34", "0.26", "0.20", "0.11.0")


@dataclass
class CompletionOutput:  # vllm/outputs.py
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:  # vllm/outputs.py
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool
    kv_transfer_params: dict[str, Any] | None = None


class RequestOutputKind(enum.Enum):  # vllm/sampling_params.py
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass
class StructuredOutputsParams:  # vllm/sampling_params.py (checked when the request is added)
    json: Any = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None


@dataclass
class BeamSearchParams:  # vllm/sampling_params.py
    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False


class AsyncEngineArgs:  # vllm/engine/arg_utils.py: a bag of the engine's options
    def __init__(self, model: str, max_model_len: int | None = None, **options: Any) -> None:
        self.model, self.max_model_len, self.options = model, max_model_len, options


class KVTransferConfig:  # vllm/config/kv_transfer.py
    def __init__(self, kv_connector: str, kv_role: str, kv_load_failure_policy: str = "fail", **rest: Any):
        self.kv_connector, self.kv_role, self.kv_load_failure_policy = (
            kv_connector,
            kv_role,
            kv_load_failure_policy,
        )


def _exceptions(release: str) -> types.ModuleType:
    """vllm/exceptions.py: since 0.27 a client/server split; before, validation errors are ValueErrors."""
    module = types.ModuleType("vllm.exceptions")

    class VLLMError(Exception):
        pass

    class VLLMClientError(VLLMError):
        pass

    base: type[Exception] = VLLMClientError if release == "0.34" else ValueError

    class VLLMValidationError(base):  # type: ignore[valid-type,misc]
        def __init__(self, message: str, *, parameter: str | None = None, value: Any = None) -> None:
            super().__init__(message)
            self.parameter, self.value = parameter, value

        def __str__(self) -> str:
            extras = [f"{k}={v}" for k, v in (("parameter", self.parameter), ("value", self.value)) if v]
            return f"{super().__str__()} ({', '.join(extras)})" if extras else super().__str__()

    module.VLLMError = VLLMError  # type: ignore[attr-defined]
    module.VLLMValidationError = VLLMValidationError  # type: ignore[attr-defined]
    if release == "0.34":
        module.VLLMClientError = VLLMClientError  # type: ignore[attr-defined]
    return module


class FakeVllm:
    """The installed fake: its modules and the validation error class of its release."""

    def __init__(self, release: str) -> None:
        self.release = release
        self.exceptions = _exceptions(release)
        self.validation_error: Any = (
            ValueError if release == "0.11.0" else self.exceptions.VLLMValidationError
        )
        self.engines: list[AsyncLLM] = []

    def refuse(self, message: str, parameter: str | None = None) -> Exception:
        if self.validation_error is ValueError:
            return ValueError(message)
        return self.validation_error(message, parameter=parameter)


class SamplingParams:  # vllm/sampling_params.py: checked as it is built (_verify_args)
    fake: FakeVllm

    def __init__(self, **kwargs: Any) -> None:
        self.extra_args: dict[str, Any] | None = None
        self.structured_outputs: StructuredOutputsParams | None = None
        self.__dict__.update(kwargs)
        if kwargs.get("max_tokens", 16) < 1:
            raise self.fake.refuse(
                f"max_tokens must be at least 1, got {kwargs['max_tokens']}.", "max_tokens"
            )


class AsyncLLM:  # vllm/v1/engine/async_llm.py
    fake: FakeVllm

    def __init__(self, args: AsyncEngineArgs) -> None:
        from transformers import AutoTokenizer

        config = json.loads((Path(args.model) / "config.json").read_text())
        # vLLM's ModelConfig: --max-model-len, else what the model's config allows.
        self.model_config = types.SimpleNamespace(
            max_model_len=args.max_model_len or config["max_position_embeddings"]
        )
        self.tokenizer = AutoTokenizer.from_pretrained(args.model)
        self.renderer = types.SimpleNamespace(get_tokenizer=lambda: self.tokenizer)
        self.input_processor = types.SimpleNamespace(resolve_watermarking=lambda params: None)
        self.answer = "Paris."
        self.beams: list[tuple[list[int], float, str]] = []
        self.kv_load_fails = False
        self.prefill_host = "10.0.0.7"
        self.added: list[tuple[Any, Any, str]] = []
        self.aborted: list[str] = []
        self.rejected: list[tuple[str, dict[str, Any]]] = []
        self.deprecated_prompts = 0
        self.shutdowns = 0
        if self.fake.release == "0.11.0":  # the engine client's own beam search, removed in 0.11.1
            self.beam_search = self._engine_client_beam_search
        if self.fake.release in ("0.34", "0.26"):  # since 0.21
            self.notify_kv_transfer_request_rejected = self._notify_rejected
        self.fake.engines.append(self)

    @classmethod
    def from_engine_args(cls, engine_args: AsyncEngineArgs, start_engine_loop: bool = True) -> AsyncLLM:
        return cls(engine_args)

    def prompt_ids(self, prompt: Any) -> list[int]:
        """InputProcessor.process_inputs: a rendered TokensInput as it is; a raw dict is deprecated."""
        if not (isinstance(prompt, dict) and prompt.get("type") == "token"):
            self.deprecated_prompts += 1
        ids = list(prompt["prompt_token_ids"])
        if len(ids) > self.model_config.max_model_len:
            raise self.fake.refuse(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model length of "
                f"{self.model_config.max_model_len}."
            )
        return ids

    def check(self, params: SamplingParams) -> None:
        """The structured-output backend's check of a spec (vLLM 0.34: VLLMValidationError)."""
        spec = params.structured_outputs or getattr(params, "guided_decoding", None)
        if spec is not None and spec.regex is not None:
            try:
                re.compile(spec.regex)
            except re.error as exc:
                raise self.fake.refuse(f"Error parsing regex: {exc}") from None

    async def generate(self, prompt: Any, sampling_params: SamplingParams, request_id: str, **_: Any):
        ids = self.prompt_ids(prompt)
        self.check(sampling_params)
        self.added.append((prompt, sampling_params, request_id))
        transfer = (sampling_params.extra_args or {}).get("kv_transfer_params") or {}
        if transfer.get("do_remote_prefill") and self.kv_load_fails:  # kv_load_failure_policy="fail"
            yield self._output(request_id, ids, CompletionOutput(0, "", [], None, None, "error"))
            return
        if transfer.get("do_remote_decode"):  # a prefill kept for a remote decode
            kept = {"do_remote_prefill": True, "remote_block_ids": [1, 2], "remote_host": self.prefill_host}
            first = self.tokenizer.encode("The", add_special_tokens=False)
            out = CompletionOutput(0, "The", first, None, None, "length")
            yield self._output(request_id, ids, out, kv_transfer_params=kept)
            return
        tokens = self.tokenizer.encode(self.answer, add_special_tokens=False)
        for i, token in enumerate(tokens):
            last = i == len(tokens) - 1
            text = str(self.tokenizer.decode([token]))
            yield self._output(
                request_id, ids, CompletionOutput(0, text, [token], None, None, "stop" if last else None)
            )

    @staticmethod
    def _output(request_id: str, ids: list[int], out: CompletionOutput, **rest: Any) -> RequestOutput:
        return RequestOutput(request_id, None, ids, None, [out], out.finish_reason is not None, **rest)

    async def abort(self, request_id: str, internal: bool = False) -> None:
        self.aborted.append(request_id)

    async def _notify_rejected(
        self, request_id: str, kv_transfer_params: dict[str, Any], *, data_parallel_rank: int | None = None
    ) -> None:
        self.rejected.append((request_id, kv_transfer_params))

    def shutdown(self, timeout: float | None = None) -> None:
        self.shutdowns += 1

    def finished_beams(self, prompt_ids: list[int], params: BeamSearchParams, length: Any) -> RequestOutput:
        """The best `beam_width` of `beams`, ranked by `length` as the release ranks them."""
        best = sorted(
            self.beams, key=lambda b: b[1] / length(prompt_ids, b) ** params.length_penalty, reverse=True
        )[: params.beam_width]
        outputs = [
            CompletionOutput(i, str(self.tokenizer.decode(tokens)), tokens, cum, None, reason)
            for i, (tokens, cum, reason) in enumerate(best)
        ]
        return RequestOutput("beams", None, prompt_ids, None, outputs, True)

    async def _engine_client_beam_search(
        self, prompt: Any, request_id: str, params: BeamSearchParams, lora_request=None
    ):
        """vllm/engine/protocol.py 0.11.0: the prompt's tokens count in a beam's length."""
        ids = list(prompt.get("prompt_token_ids"))
        yield self.finished_beams(ids, params, lambda p, b: len(p) + len(b[0]))


class BeamSearchOnlineMixin(ABC):  # vllm/entrypoints/generate/beam_search/online.py
    """vLLM 0.34's mixin: needs `engine_client` and `renderer`; ranks by generated tokens, EOS included."""

    renderer: Any
    engine_client: Any

    async def beam_search(
        self, prompt, request_id, params, lora_request=None, trace_headers=None, session_id=None, priority=0
    ):
        self.engine_client.input_processor.resolve_watermarking(params)
        self.renderer.get_tokenizer()
        if prompt["type"] == "embeds":
            raise NotImplementedError("Embedding prompt not supported for beam search")
        ids = self.engine_client.prompt_ids(prompt)
        yield self.engine_client.finished_beams(
            ids, params, lambda p, b: max(len(b[0]) + (b[2] == "stop"), 1)
        )


def tokens_input(prompt_token_ids: list[int], *, prompt: str | None = None, cache_salt: str | None = None):
    """vllm/inputs/engine.py (0.19 and later)."""
    return {"type": "token", "prompt_token_ids": prompt_token_ids}


def TokensPrompt(**fields: Any) -> dict[str, Any]:  # vllm/inputs/data.py: a TypedDict
    return dict(fields)


def install(monkeypatch: pytest.MonkeyPatch, release: str = "0.34") -> FakeVllm:
    """Put the fake `vllm` of `release` in sys.modules for one test."""
    fake = FakeVllm(release)
    sampling = type("SamplingParams", (SamplingParams,), {"fake": fake})
    llm = type("AsyncLLM", (AsyncLLM,), {"fake": fake})
    modules: dict[str, dict[str, Any]] = {
        "vllm": {"AsyncEngineArgs": AsyncEngineArgs, "SamplingParams": sampling},
        "vllm.config": {"KVTransferConfig": KVTransferConfig},
        "vllm.inputs": {"TokensPrompt": TokensPrompt},
        "vllm.sampling_params": {
            "RequestOutputKind": RequestOutputKind,
            "StructuredOutputsParams": StructuredOutputsParams,
            "BeamSearchParams": BeamSearchParams,
        },
        "vllm.v1": {},
        "vllm.v1.engine": {},
        "vllm.v1.engine.async_llm": {"AsyncLLM": llm},
    }
    if release != "0.11.0":
        modules["vllm.inputs"]["tokens_input"] = tokens_input
    for name, attributes in modules.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    if release == "0.11.0":
        monkeypatch.setitem(sys.modules, "vllm.exceptions", None)  # `import` raises ImportError
    else:
        monkeypatch.setitem(sys.modules, "vllm.exceptions", fake.exceptions)
    online = "vllm.entrypoints.generate.beam_search.online"
    if release in ("0.34", "0.26"):
        module = types.ModuleType(online)
        module.BeamSearchOnlineMixin = BeamSearchOnlineMixin  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, online, module)
    else:
        monkeypatch.setitem(sys.modules, online, None)
    return fake
