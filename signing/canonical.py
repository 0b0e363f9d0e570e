"""Build the string a go-infer request signs; shared by the server and the client.

This module imports no Django so that `portal.signed.client` works alone.

The rules, matched against go-infer's server (`http/http_helper.go`):

- every top-level key except `signData`, sorted by byte order, each as `k=v&`;
  then `key=<secret>` is appended;
- an object value (`data` above all) is compact JSON with keys sorted and
  non-ASCII characters written raw (no `\\u` escapes);
- `timestamp` is written as an integer (go-infer truncates a float);
- another number is written in its shortest form, as Go's `encoding/json` would:
  `1.0` becomes `1`, `1e-7` becomes `1e-7`;
- booleans, nulls and arrays at the top level are left out;
- an empty string is written as `k=&`, as go-infer's server does.

Two deviations of go-infer's own tools are accepted as alternatives by the
server (see `candidate_strings`): go-infer's Python client leaves top-level
empty strings out, and Go's `json.Marshal` escapes `<`, `>`, `&`, U+2028 and
U+2029 inside `data`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

SIGNATURE_FIELD = "signData"
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_EXPONENT = re.compile(r"e([+-])0*(\d)")


def format_number(value: int | float) -> str:
    """Write a number the way Go's `encoding/json` writes a float64 (shortest round trip)."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError("NaN and infinity cannot be signed")
    if value == 0:
        return "0"
    if 1e-6 <= abs(value) < 1e21:
        return format(Decimal(repr(value)).normalize(), "f")
    return _EXPONENT.sub(r"e\1\2", repr(value))


def compact_json(value: Any) -> str:
    """Serialise like go-infer's signer: sorted keys, no spaces, raw UTF-8, Go-style numbers."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return format_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda item: str(item[0]))
        return "{" + ",".join(f"{compact_json(str(k))}:{compact_json(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(compact_json(item) for item in value) + "]"
    raise TypeError(f"cannot sign a value of type {type(value).__name__}")


def _go_escape(text: str) -> str:
    # Only string contents can hold these characters, so a plain replace is exact.
    for raw, escaped in _GO_ESCAPES.items():
        text = text.replace(raw, escaped)
    return text


def _render(key: str, value: Any, *, go_escape: bool) -> str | None:
    if isinstance(value, bool) or value is None or isinstance(value, list | tuple):
        return None
    if key == "timestamp" and isinstance(value, int | float):
        return str(int(value))
    if isinstance(value, int | float):
        return format_number(value)
    if isinstance(value, Mapping):
        text = compact_json(value)
        return _go_escape(text) if go_escape else text
    return str(value)


def canonical_string(
    fields: Mapping[str, Any], secret: str, *, skip_empty: bool = False, go_escape: bool = False
) -> str:
    """Return the string to sign for `fields` (the request body) and the app's secret.

    The defaults give the canonical form; `skip_empty` and `go_escape` give the
    variants that go-infer's Python client and Go server produce.
    """
    parts = []
    for key in sorted(fields, key=lambda k: k.encode("utf-8")):
        if key == SIGNATURE_FIELD:
            continue
        rendered = _render(key, fields[key], go_escape=go_escape)
        if rendered is None or (skip_empty and rendered == ""):
            continue
        parts.append(f"{key}={rendered}&")
    return "".join(parts) + f"key={secret}"


def candidate_strings(fields: Mapping[str, Any], secret: str) -> Iterator[str]:
    """Yield the canonical string, then each distinct variant a go-infer tool may have signed."""
    seen: set[str] = set()
    for skip_empty in (False, True):
        for go_escape in (False, True):
            text = canonical_string(fields, secret, skip_empty=skip_empty, go_escape=go_escape)
            if text not in seen:
                seen.add(text)
                yield text


def sha256_sign_data(message: str) -> str:
    """go-infer's SHA256 signature: base64 of the lowercase hex digest (88 characters)."""
    digest = hashlib.sha256(message.encode("utf-8")).hexdigest()
    return base64.b64encode(digest.encode("ascii")).decode("ascii")
