"""A corpus of malformed inputs for every door: raw bodies, hostile field values, wrong content types.

Pure data, no Django and no network: the tests in this package send it to the
portal's `/v1`, the signed API, the chat websocket and a worker, and require
that nothing answers 5xx and no process dies. Deterministic: the random bytes
come from a seeded generator.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

TEN_MB = 10 * 1024 * 1024
MULTIPART = "multipart/form-data; boundary=x"


@dataclass(frozen=True)
class Case:
    """One request body: `name` says what it tries, `content_type` what the header claims."""

    name: str
    body: bytes
    content_type: str = "application/json"


def _deep(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


def raw_cases() -> list[Case]:
    """Bodies that are not a valid request object at all."""
    rng = random.Random(9)
    garbage = bytes(rng.getrandbits(8) for _ in range(4096))
    return [
        Case("empty", b""),
        Case("null", b"null"),
        Case("array", b"[]"),
        Case("string", b'"hello"'),
        Case("number", b"42"),
        Case("truncated object", b'{"model": "m", "messages": [{"role": "user", "content": "hi"'),
        Case("truncated string", b'{"model": "m'),
        Case("trailing garbage", b'{"model": "m"} trailing'),
        Case("deep arrays", _deep(100_000)),
        Case("deep objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
        Case("deep field", b'{"model": "m", "messages": ' + _deep(20_000) + b"}"),
        Case("nan literal", b'{"model": "m", "temperature": NaN}'),
        Case("infinity literal", b'{"model": "m", "max_tokens": Infinity}'),
        Case("huge exponent", b'{"model": "m", "temperature": 1e999999}'),
        Case("huge integer literal", b'{"model": "m", "max_tokens": ' + b"9" * 100_000 + b"}"),
        Case("lone surrogate", b'{"model": "\\ud800", "input": "\\udfff"}'),
        Case("invalid utf-8", b'{"model": "\xff\xfe", "input": "\xc3\x28"}'),
        Case("utf-16 body", '{"model": "m"}'.encode("utf-16")),
        Case("byte order mark", b'\xef\xbb\xbf{"model": "m"}'),
        Case("nul bytes", b'{"model": "m\x00", "input": "\x00"}'),
        Case("binary garbage", garbage),
        Case("ten megabytes of json", b'{"model": "m", "input": "' + b"a" * TEN_MB + b'"}'),
        Case("ten megabytes of garbage", garbage * (TEN_MB // len(garbage))),
        Case("plain text", b"model=m&input=hello", "text/plain"),
        Case("form", b"model=m&input=hello", "application/x-www-form-urlencoded"),
        Case("multipart", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nb\r\n--x--", MULTIPART),
        Case("xml", b"<request><model>m</model></request>", "application/xml"),
        Case("no content type", b'{"model": "m"}', ""),
    ]


def hostile_values() -> list[tuple[str, Any]]:
    """Values to put in every field; each is something a client could send."""
    nested: Any = []
    for _ in range(500):
        nested = [nested]
    return [
        ("null", None),
        ("true", True),
        ("zero", 0),
        ("minus one", -1),
        ("int32 max + 1", 2**31),
        ("2^64", 2**64),
        ("minus 2^64", -(2**64)),
        ("float max", 1.7976931348623157e308),
        ("tiny float", 1e-40),
        ("nan", float("nan")),
        ("infinity", float("inf")),
        ("empty string", ""),
        ("long string", "x" * 100_000),
        ("lone surrogate", "\ud800"),
        ("markup", "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=1>"),
        ("control characters", "a\x00b\x1bc\u2028"),
        ("empty list", []),
        ("nested lists", nested),
        ("empty object", {}),
        ("object", {"role": "user", "content": {"x": 1}}),
        ("token past the vocabulary", [49152]),
        ("negative token", [-1]),
        ("many strings", ["s"] * 5000),
        ("many numbers", list(range(5000))),
    ]


CHAT_BODY: dict[str, Any] = {
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 2,
    "temperature": 0,
}
COMPLETION_BODY: dict[str, Any] = {"prompt": "Hello", "max_tokens": 2, "temperature": 0}
EMBEDDING_BODY: dict[str, Any] = {"input": "hello"}
SAMPLING_FIELDS = (
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stop",
    "stop_token_ids", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "ignore_eos", "stream", "stream_options", "user", "logprobs", "response_format", "tools",
)  # fmt: skip
FIELDS = {
    "chat/completions": ("model", "messages", *SAMPLING_FIELDS),
    "completions": ("model", "prompt", *SAMPLING_FIELDS),
    "embeddings": ("model", "input", "encoding_format", "dimensions", "user"),
}
MESSAGE_FIELDS = ("role", "content", "name")


def base_body(endpoint: str, model: str) -> dict[str, Any]:
    base = {"chat/completions": CHAT_BODY, "completions": COMPLETION_BODY, "embeddings": EMBEDDING_BODY}
    return {"model": model, **json.loads(json.dumps(base[endpoint]))}


def encode(body: Any) -> bytes:
    """JSON as Python writes it: NaN and Infinity as bare literals, surrogates escaped."""
    return json.dumps(body).encode()


def field_cases(endpoint: str, model: str) -> Iterator[Case]:
    """A valid body for `endpoint` with one field (or one message field) replaced by a hostile value."""
    values = hostile_values()
    for field in FIELDS[endpoint]:
        for label, value in values:
            body = base_body(endpoint, model)
            body[field] = value
            yield Case(f"{field} = {label}", encode(body))
    if endpoint == "chat/completions":
        for field in MESSAGE_FIELDS:
            for label, value in values:
                body = base_body(endpoint, model)
                body["messages"][0][field] = value
                yield Case(f"messages[0].{field} = {label}", encode(body))


def cases(endpoint: str, model: str) -> list[Case]:
    """Every case for one OpenAI endpoint: raw bodies first, then field by field."""
    return [*raw_cases(), *field_cases(endpoint, model)]
