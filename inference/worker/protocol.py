"""The OpenAI wire format as the worker reads and writes it: this model's checks and response shapes.

Bodies are parsed by the shared parser (`inference.protocol`), strictly: a
field the worker does not implement is a 400 naming it. This module adds
what depends on the model (its names, its context) and shapes responses.
No Starlette here, so the schema is tested on its own.
"""

from __future__ import annotations

import base64
import math
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from inference import protocol
from inference.engines.base import TokenLogprob, Usage
from inference.errors import EngineError, InvalidRequest
from inference.protocol import ChatRequest, CompletionRequest, EmbeddingRequest, GenerateCall

# Text is refused before tokenizing beyond this many characters per token of context:
# tokenizing a 10 MB string would cost seconds for a prompt that cannot fit anyway.
CHARS_PER_TOKEN = 32


class ModelNotFound(InvalidRequest):
    """The body names a model this worker does not serve."""

    status_code = 404
    code = "model_not_found"


class RequestNotFound(InvalidRequest):
    """/abort names a request that is not running here (finished, or never seen)."""

    status_code = 404
    code = "request_not_found"


class Draining(EngineError):
    """The worker is shutting down: the portal should send the request elsewhere."""

    status_code = 503
    error_type = "overloaded_error"
    code = "worker_draining"


@dataclass(frozen=True)
class Served:
    """What parsing needs to know of the worker: its model names and its context length."""

    names: list[str]
    max_model_len: int

    @property
    def max_chars(self) -> int:
        """The most characters a prompt, a conversation or an embedding input may have."""
        return CHARS_PER_TOKEN * self.max_model_len


def error_body(message: str, *, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    """Return OpenAI's error object; clients (and the openai SDK) read exactly these keys."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _served_model(model: str, served: Served) -> str:
    if model not in served.names:
        raise ModelNotFound(
            f"The model '{model}' does not exist on this worker; it serves: {', '.join(served.names)}.",
            field="model",
        )
    return model


def check_text(text: str, field: str, max_chars: int) -> str:
    """Refuse text too long to tokenize, or that no tokenizer can encode (a lone surrogate)."""
    if len(text) > max_chars:
        raise InvalidRequest(
            f"'{field}' is too long: at most {max_chars} characters for this model's context.", field=field
        )
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(f"'{field}' is not valid Unicode text.", field=field) from None
    return text


def parse_chat(body: Any, served: Served) -> ChatRequest:
    """Parse a chat completion body for this worker; raise InvalidRequest naming the field."""
    call = protocol.parse_chat(body, strict=True)
    _served_model(call.model, served)
    if len(call.messages) > served.max_model_len:  # every message costs tokens of its template
        raise InvalidRequest(f"'messages' allows at most {served.max_model_len} messages.", field="messages")
    check_text("".join(m["content"] for m in call.messages), "messages", served.max_chars)
    return call


def parse_completion(body: Any, served: Served) -> CompletionRequest:
    """Parse a completion body for this worker: each prompt is a string or token ids."""
    call = protocol.parse_completion(body, strict=True)
    _served_model(call.model, served)
    for prompt in call.prompts:
        if isinstance(prompt, str):
            check_text(prompt, "prompt", served.max_chars)
        elif len(prompt) > served.max_model_len:
            raise InvalidRequest(
                f"'prompt' has more tokens than this model's context ({served.max_model_len}).",
                field="prompt",
            )
    return call


def parse_embeddings(body: Any, served: Served) -> EmbeddingRequest:
    """Parse an embeddings body for this worker."""
    call = protocol.parse_embedding(body, strict=True)
    _served_model(call.model, served)
    for text in call.texts:
        check_text(text, "input", served.max_chars)
    return call


LOGPROB_FLOOR = -9999.0  # what a token the model rules out reports: -inf is not JSON
Describe = Callable[[int], tuple[str, bytes]]


def finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else LOGPROB_FLOOR


def usage_dict(usage: Usage) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens:  # OpenAI's field: prompt tokens the prefix cache served
        answer["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    return answer


def encode_vector(vector: list[float], encoding: str) -> list[float] | str:
    """Return the vector as floats or as base64 of little-endian float32, as OpenAI sends it."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


@dataclass(frozen=True)
class Shape:
    """How responses of one endpoint look: chat or text completion."""

    chat: bool
    response_id: str
    model: str
    created: int

    @classmethod
    def for_call(cls, call: GenerateCall) -> Shape:
        chat = call.messages is not None
        return cls(chat, new_id("chatcmpl" if chat else "cmpl"), call.model, int(time.time()))

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.response_id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def choice(
        self,
        index: int,
        text: str | None,
        finish_reason: str | None,
        *,
        logprobs: dict[str, Any] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if tool_calls:
                message["tool_calls"] = tool_calls
            return {"index": index, "message": message, "finish_reason": finish_reason, "logprobs": logprobs}
        return {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": logprobs}

    def response(self, choices: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
        body = self._envelope("chat.completion" if self.chat else "text_completion", choices)
        body["usage"] = usage_dict(usage)
        return body

    def chunk(
        self,
        index: int,
        text: str | None,
        finish_reason: str | None,
        *,
        role: bool = False,
        logprobs: dict[str, Any] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """One streamed chunk for choice `index`; `role` marks a chat's first chunk."""
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            if tool_calls:
                delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(tool_calls)]
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}
        else:
            choice = {
                "index": index,
                "text": text or "",
                "finish_reason": finish_reason,
                "logprobs": logprobs,
            }
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])

    def logprobs(
        self, entries: Sequence[TokenLogprob], describe: Describe, offset: int = 0
    ) -> dict[str, Any]:
        """OpenAI's logprobs object for `entries`: chat's `content` list, or the legacy four lists.

        `describe` gives a token's text and bytes; `offset` is where the first
        token's text starts in the choice's text (legacy `text_offset`).
        """
        if self.chat:
            content = []
            for entry in entries:
                text, raw = describe(entry.token_id)
                top = [
                    {"token": t, "logprob": finite(lp), "bytes": list(b)}
                    for t, b, lp in ((*describe(i), lp) for i, lp in entry.top)
                ]
                content.append(
                    {"token": text, "logprob": finite(entry.logprob), "bytes": list(raw), "top_logprobs": top}
                )
            return {"content": content}
        tokens: list[str] = []
        token_logprobs: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        offsets: list[int] = []
        for entry in entries:
            text = describe(entry.token_id)[0]
            tokens.append(text)
            first = math.isnan(entry.logprob)  # an echoed prompt's first token: nothing precedes it
            token_logprobs.append(None if first else finite(entry.logprob))
            # The chosen token is always among its alternatives (`logprobs: 0` lists it alone), as in vLLM.
            alternatives = {describe(i)[0]: finite(lp) for i, lp in entry.top}
            alternatives.setdefault(text, finite(entry.logprob))
            tops.append(None if first else alternatives)
            offsets.append(offset)
            offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": token_logprobs,
            "top_logprobs": tops,
            "text_offset": offsets,
        }

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        body["usage"] = usage_dict(usage)
        return body
