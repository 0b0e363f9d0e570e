"""The OpenAI wire schema as the worker reads and writes it: parsing and response shapes.

Parsing turns a JSON body into a small frozen dataclass or raises
`InvalidRequest` naming the field, so the HTTP layer only maps errors to
status codes. No Starlette here, so the schema is tested on its own.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

from inference.engines.base import Usage
from inference.errors import EngineError, InvalidRequest
from inference.sampling import SamplingParams

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_N = 16
MAX_MODEL_NAME = 256
MAX_EMBED_INPUTS = 2048
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


@dataclass(frozen=True)
class GenerateCall:
    """One parsed /v1/chat/completions or /v1/completions request."""

    model: str
    params: SamplingParams
    n: int
    stream: bool
    include_usage: bool
    max_tokens_given: bool
    messages: list[dict[str, Any]] | None = None  # chat
    prompt: str | None = None  # completions, text
    prompt_token_ids: list[int] | None = None  # completions, token ids


@dataclass(frozen=True)
class EmbedCall:
    model: str
    texts: list[str]
    encoding_format: str


def error_body(message: str, *, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    """Return OpenAI's error object; clients (and the openai SDK) read exactly these keys."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _require_model(body: dict[str, Any], served: Served) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", field="model")
    if len(model) > MAX_MODEL_NAME:
        raise InvalidRequest(f"'model' must be at most {MAX_MODEL_NAME} characters.", field="model")
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


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"'{name}' must be a boolean.", field=name)
    return value


def _common(body: dict[str, Any], served: Served) -> dict[str, Any]:
    model = _require_model(body, served)
    n = body.get("n", 1)
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise InvalidRequest(f"'n' must be an integer between 1 and {MAX_N}.", field="n")
    # Refused rather than silently ignored: a client relying on them would get wrong answers.
    for unsupported in ("logprobs", "top_logprobs", "echo", "tools", "response_format"):
        if body.get(unsupported):
            raise InvalidRequest(f"'{unsupported}' is not supported by this worker.", field=unsupported)
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("'stream_options' must be an object.", field="stream_options")
    include_usage = bool(options and options.get("include_usage"))
    params = SamplingParams.from_request(body)
    given = body.get("max_tokens") is not None or body.get("max_completion_tokens") is not None
    return {
        "model": model,
        "params": params,
        "n": n,
        "stream": stream,
        "include_usage": stream and include_usage,
        "max_tokens_given": given,
    }


def _message(index: int, raw: Any) -> dict[str, Any]:
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"'{where}' must be an object.", field=where)
    role = raw.get("role")
    if not isinstance(role, str) or role not in CHAT_ROLES:
        raise InvalidRequest(
            f"'{where}.role' must be one of {', '.join(sorted(CHAT_ROLES))}; got {repr(role)[:40]}.",
            field=f"{where}.role",
        )
    content = raw.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, list):
        # The content-part form: only text parts are meaningful to a text model.
        parts = []
        for part in content:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise InvalidRequest(f"'{where}.content' parts must be text parts.", field=f"{where}.content")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise InvalidRequest(f"'{where}.content' must be a string.", field=f"{where}.content")
    return {"role": "system" if role == "developer" else role, "content": content}


def parse_chat(body: dict[str, Any], served: Served) -> GenerateCall:
    """Parse a chat completion body; raise InvalidRequest naming the offending field."""
    common = _common(body, served)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list.", field="messages")
    if len(messages) > served.max_model_len:  # every message costs tokens of its template
        raise InvalidRequest(f"'messages' allows at most {served.max_model_len} messages.", field="messages")
    parsed = [_message(i, m) for i, m in enumerate(messages)]
    check_text("".join(m["content"] for m in parsed), "messages", served.max_chars)
    return GenerateCall(messages=parsed, **common)


def parse_completion(body: dict[str, Any], served: Served) -> GenerateCall:
    """Parse a completion body: `prompt` is a string, one-string list or token ids."""
    common = _common(body, served)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequest("'prompt' must not be empty.", field="prompt")
        return GenerateCall(prompt=check_text(prompt, "prompt", served.max_chars), **common)
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt)
    ):
        return GenerateCall(prompt_token_ids=list(prompt), **common)
    raise InvalidRequest(
        "'prompt' must be a non-empty string or a list of token ids (one prompt per request).",
        field="prompt",
    )


def parse_embeddings(body: dict[str, Any], served: Served) -> EmbedCall:
    """Parse an embeddings body: text input only; token-id input is refused."""
    model = _require_model(body, served)
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if isinstance(texts, list) and len(texts) > MAX_EMBED_INPUTS:
        raise InvalidRequest(f"'input' allows at most {MAX_EMBED_INPUTS} texts.", field="input")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest("'input' must be a string or a non-empty list of strings.", field="input")
    if any(not t for t in texts):
        raise InvalidRequest("'input' strings must not be empty.", field="input")
    for text in texts:
        check_text(text, "input", served.max_chars)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.", field="encoding_format")
    return EmbedCall(model=model, texts=texts, encoding_format=encoding)


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


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

    def choice(self, index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
        if self.chat:
            message = {"role": "assistant", "content": text}
            return {"index": index, "message": message, "finish_reason": finish_reason, "logprobs": None}
        return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}

    def response(self, choices: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
        body = self._envelope("chat.completion" if self.chat else "text_completion", choices)
        body["usage"] = usage_dict(usage)
        return body

    def chunk(
        self, index: int, text: str | None, finish_reason: str | None, *, role: bool = False
    ) -> dict[str, Any]:
        """One streamed chunk for choice `index`; `role` marks a chat's first chunk."""
        if self.chat:
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        body["usage"] = usage_dict(usage)
        return body
