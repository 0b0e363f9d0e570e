"""Request bodies into typed requests: the one parser of the OpenAI wire format.

Used by the worker (strict: a field it does not know is a 400 naming it), by
the portal's `/v1` API, the signed pipelines and the chat page (lenient: a
field it does not know passes through untouched to the upstream, which may be
a vLLM worker or a remote endpoint that knows it). What depends on the model
(its names, context length, vocabulary) is the worker's to check.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from inference.errors import InvalidRequest
from inference.protocol import fields as f
from inference.protocol.fields import Field
from inference.protocol.messages import SCHEMA as MESSAGES_SCHEMA
from inference.protocol.messages import parse_messages
from inference.protocol.structured import (
    GUIDED_SCHEMAS,
    RESPONSE_FORMAT_SCHEMA,
    STRUCTURED_OUTPUTS_SCHEMA,
    read_guide,
)
from inference.protocol.tools import TOOL_CHOICE_SCHEMA, TOOLS_SCHEMA, Tools, parse_tools
from inference.sampling import FIELD_NAMES, Guide, SamplingParams

MAX_EMBED_INPUTS = 2048
MAX_PROMPTS = 64  # prompts in one completion request; each is n engine requests on one worker
MAX_TOKEN_ID = 2**31 - 1
# Beam search ranks beams by the model's own log probabilities: sampling fields have no meaning there.
BEAM_EXCLUDES = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "tools",
)


Prompt = str | tuple[int, ...]  # a completion's prompt: a text, or token ids


@dataclass(frozen=True, kw_only=True)
class GenerateRequest:
    """What chat and text completions share."""

    model: str
    params: SamplingParams
    n: int = 1
    best_of: int | None = None  # candidates to generate when more than n
    beam_search: bool = False
    length_penalty: float = 1.0
    early_stopping: bool = False
    stream: bool = False
    include_usage: bool = False
    max_tokens_given: bool = False  # False: max_tokens is the default and may shrink to fit
    user: str | None = None

    @property
    def candidates(self) -> int:
        return max(self.n, self.best_of or 0)


@dataclass(frozen=True, kw_only=True)
class ChatRequest(GenerateRequest):
    messages: list[dict[str, Any]]
    tools: Tools | None = None

    prompts: ClassVar[tuple[Prompt, ...]] = ()
    echo = False


@dataclass(frozen=True, kw_only=True)
class CompletionRequest(GenerateRequest):
    """One or more prompts; the answer has n choices per prompt, prompt-major.

    `params.max_tokens == 0` (only with `echo`): the prompts alone, with their
    logprobs when asked, and nothing generated.
    """

    prompts: tuple[Prompt, ...]
    echo: bool = False

    messages = None
    tools = None


GenerateCall = ChatRequest | CompletionRequest


@dataclass(frozen=True, kw_only=True)
class EmbeddingRequest:
    model: str
    texts: list[str]
    encoding_format: str = "float"
    user: str | None = None


def _is_token_ids(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= MAX_TOKEN_ID for t in value)
    )


def _prompts(name: str, value: Any) -> tuple[Prompt, ...]:
    """OpenAI's four forms: a text, token ids, a list of texts or a list of token-id lists."""
    if isinstance(value, str) or _is_token_ids(value):
        value = [value]
    elif not (
        isinstance(value, list)
        and value
        and (all(isinstance(p, str) for p in value) or all(isinstance(p, list) for p in value))
    ):
        raise InvalidRequest(
            f"'{name}' must be a string, a list of token ids, a list of strings or a list of token-id lists.",
            field=name,
        )
    if len(value) > MAX_PROMPTS:
        raise InvalidRequest(f"'{name}' allows at most {MAX_PROMPTS} prompts.", field=name)
    if any(p == "" for p in value):
        raise InvalidRequest(f"'{name}' strings must not be empty.", field=name)
    if not all(isinstance(p, str) or _is_token_ids(p) for p in value):
        raise InvalidRequest(
            f"'{name}' token-id lists must be non-empty, of integers 0 to {MAX_TOKEN_ID}.", field=name
        )
    return tuple(p if isinstance(p, str) else tuple(p) for p in value)


def _completion_max_tokens(name: str, value: Any) -> int:
    """As elsewhere, or 0: with `echo`, the prompt's logprobs alone (what scoring harnesses ask)."""
    if value == 0 and isinstance(value, int) and not isinstance(value, bool):
        return 0
    return int(f.SAMPLING["max_tokens"].check(name, value))


def _input(name: str, value: Any) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if isinstance(texts, list) and len(texts) > MAX_EMBED_INPUTS:
        raise InvalidRequest(f"'{name}' allows at most {MAX_EMBED_INPUTS} texts.", field=name)
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidRequest(f"'{name}' must be a string or a non-empty list of strings.", field=name)
    if any(not t for t in texts):
        raise InvalidRequest(f"'{name}' strings must not be empty.", field=name)
    return texts


def _encoding(name: str, value: Any) -> str:
    if value not in ("float", "base64"):
        raise InvalidRequest(f"'{name}' must be 'float' or 'base64'.", field=name)
    return str(value)


def _completion_logprobs(name: str, value: Any) -> int:
    return f.integer(0, f.MAX_TOP_LOGPROBS)(name, value)


_STRUCTURED: dict[str, Field] = {
    "response_format": Field(f.anything, RESPONSE_FORMAT_SCHEMA, "text, json_object or json_schema."),
    **{name: Field(f.anything, schema, doc) for name, (schema, doc) in GUIDED_SCHEMAS.items()},
    "structured_outputs": Field(
        f.anything, STRUCTURED_OUTPUTS_SCHEMA, "vLLM's newer form of the guided fields."
    ),
}

CHAT_FIELDS: dict[str, Field] = {
    "messages": Field(f.anything, MESSAGES_SCHEMA, "The conversation.", required=True),
    **f.GENERATION,
    **_STRUCTURED,
    "logprobs": Field(f.boolean, f.BOOLEAN, "Return the log probability of each output token."),
    "top_logprobs": Field(
        f.integer(0, f.MAX_TOP_LOGPROBS),
        {**f.INTEGER, "minimum": 0, "maximum": f.MAX_TOP_LOGPROBS},
        "With logprobs: the most likely alternatives per token.",
    ),
    "tools": Field(f.anything, TOOLS_SCHEMA, "Functions the model may call."),
    "tool_choice": Field(f.anything, TOOL_CHOICE_SCHEMA, "none, auto, required or a named function."),
    "parallel_tool_calls": Field(f.boolean, f.BOOLEAN, "Whether one answer may call several tools."),
}

_TOKEN_ID = {**f.INTEGER, "minimum": 0, "maximum": MAX_TOKEN_ID}
_TOKEN_IDS = {"type": "array", "items": _TOKEN_ID, "minItems": 1}

COMPLETION_FIELDS: dict[str, Field] = {
    "prompt": Field(
        _prompts,
        {
            "oneOf": [
                {"type": "string", "minLength": 1},
                _TOKEN_IDS,
                {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "minItems": 1,
                    "maxItems": MAX_PROMPTS,
                },
                {"type": "array", "items": _TOKEN_IDS, "minItems": 1, "maxItems": MAX_PROMPTS},
            ]
        },
        "A prompt (a string or token ids) or a list of prompts: n choices each, indexed prompt-major.",
        required=True,
    ),
    **f.GENERATION,
    "max_tokens": Field(
        _completion_max_tokens,
        {**f.SAMPLING["max_tokens"].schema, "minimum": 0},
        "Most new tokens; default: what fits the context. 0, with echo: the prompt alone, no generation.",
    ),
    **_STRUCTURED,
    "logprobs": Field(
        _completion_logprobs,
        {**f.INTEGER, "minimum": 0, "maximum": f.MAX_TOP_LOGPROBS},
        "Return each output token's log probability and this many alternatives.",
    ),
    "echo": Field(f.boolean, f.BOOLEAN, "Return the prompt before the completion."),
}

EMBEDDING_FIELDS: dict[str, Field] = {
    "model": f.MODEL,
    "input": Field(
        _input,
        {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "minItems": 1,
                    "maxItems": MAX_EMBED_INPUTS,
                },
            ]
        },
        "A text or a list of texts.",
        required=True,
    ),
    "encoding_format": Field(_encoding, {"type": "string", "enum": ["float", "base64"]}, "float or base64."),
    "user": f.USER,
}


def read_fields(body: Any, table: dict[str, Field], *, strict: bool) -> dict[str, Any]:
    """Check every known field of `body`; with `strict`, a field not in `table` is a 400 naming it."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if strict:
        for name in body:
            if name not in table:
                raise InvalidRequest(
                    f"Unrecognized request argument supplied: {str(name)[:64]}", field=str(name)[:64]
                )
    values: dict[str, Any] = {}
    for name, field in table.items():
        value = body.get(name)
        if value is None:
            if field.required:
                raise InvalidRequest(f"'{name}' is required.", field=name)
            continue
        values[name] = field.check(name, value)
    return values


def _generate(values: dict[str, Any]) -> dict[str, Any]:
    """The fields chat and completions share, with their cross-field rules."""
    sampling = {name: values[name] for name in FIELD_NAMES if name in values}
    if "max_completion_tokens" in values:  # the newer name wins, as in vLLM
        sampling["max_tokens"] = values["max_completion_tokens"]
    params = SamplingParams(**sampling)
    n = values.get("n", 1)
    best_of = values.get("best_of")
    stream = values.get("stream", False)
    beam = values.get("use_beam_search", False)
    if best_of is not None and best_of < n:
        raise InvalidRequest(f"'best_of' must be at least n ({n}).", field="best_of")
    if stream and (beam or (best_of or n) > n):
        raise InvalidRequest(
            "'stream' cannot be used with best_of above n or with beam search.", field="stream"
        )
    if not beam:
        for name in ("length_penalty", "early_stopping"):
            if name in values:
                raise InvalidRequest(f"'{name}' applies to beam search only (use_beam_search).", field=name)
    else:
        for name in BEAM_EXCLUDES:
            if name in values and not (name == "temperature" and values[name] == 0):
                raise InvalidRequest(f"'{name}' does not apply to beam search.", field=name)
    return {
        "model": values["model"],
        "params": params,
        "n": n,
        "best_of": best_of,
        "beam_search": beam,
        "length_penalty": values.get("length_penalty", 1.0),
        "early_stopping": values.get("early_stopping", False),
        "stream": stream,
        "include_usage": stream and values.get("stream_options", {}).get("include_usage", False),
        "max_tokens_given": "max_tokens" in values or "max_completion_tokens" in values,
        "user": values.get("user"),
    }


def _with_guide(common: dict[str, Any], guide: Guide | None, logprobs: int | None) -> dict[str, Any]:
    common["params"] = replace(common["params"], guide=guide, logprobs=logprobs)
    if common["beam_search"] and guide is not None:
        raise InvalidRequest(f"'{guide.field}' cannot be combined with beam search.", field=guide.field)
    return common


def parse_chat(body: Any, *, strict: bool) -> ChatRequest:
    """Parse a chat completion body; raise InvalidRequest naming the offending field."""
    values = read_fields(body, CHAT_FIELDS, strict=strict)
    messages = parse_messages("messages", values["messages"])
    tools = parse_tools(values)
    guide = read_guide(values)
    if tools is not None and tools.forced:
        if guide is not None:
            raise InvalidRequest(
                f"'{guide.field}' cannot be combined with a forced tool_choice.", field=guide.field
            )
        guide = tools.guide()
    if "top_logprobs" in values and not values.get("logprobs"):
        raise InvalidRequest("'top_logprobs' needs 'logprobs': true.", field="top_logprobs")
    top = values.get("top_logprobs", 0) if values.get("logprobs") else None
    common = _with_guide(_generate(values), guide, top)
    return ChatRequest(messages=messages, tools=tools, **common)


def parse_completion(body: Any, *, strict: bool) -> CompletionRequest:
    """Parse a text completion body: one prompt or a list of them, as text or token ids."""
    values = read_fields(body, COMPLETION_FIELDS, strict=strict)
    common = _with_guide(_generate(values), read_guide(values), values.get("logprobs"))
    echo = values.get("echo", False)
    if common["params"].max_tokens == 0:
        if not echo:
            raise InvalidRequest("'max_tokens' may be 0 only with 'echo': true.", field="max_tokens")
        if common["beam_search"]:
            raise InvalidRequest("'max_tokens' 0 cannot be combined with beam search.", field="max_tokens")
    return CompletionRequest(prompts=values["prompt"], echo=echo, **common)


def parse_embedding(body: Any, *, strict: bool) -> EmbeddingRequest:
    """Parse an embeddings body: text input only (token-id input is refused)."""
    values = read_fields(body, EMBEDDING_FIELDS, strict=strict)
    return EmbeddingRequest(
        model=values["model"],
        texts=values["input"],
        encoding_format=values.get("encoding_format", "float"),
        user=values.get("user"),
    )


def request_schema(table: dict[str, Field]) -> dict[str, Any]:
    """The JSON schema (OpenAPI) of a body, from the same declarations the parser checks."""
    return {
        "type": "object",
        "properties": {name: {**field.schema, "description": field.doc} for name, field in table.items()},
        "required": [name for name, field in table.items() if field.required],
    }
