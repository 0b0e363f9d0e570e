"""Take a signed request's body in, cheapest refusals first, and keep big parses off the event loop.

Unauthenticated clients choose the body, so before any lookup: the size is
capped (9809), then a malformed `appId` is refused (9801) from a glance at the
body's first members, and only then is the body parsed and canonicalised —
in a thread when it is larger than INLINE_BYTES, so that one big body does not
stall every stream the process is serving.

This module imports no Django.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import TypeVar

from portal.signed.envelope import (
    Code,
    SignedApiError,
    SignedRequest,
    parse_request,
    valid_app_id,
)
from registry.models import APP_ID_RULE

T = TypeVar("T")

# Parsing and canonicalising this much takes ~2 ms at worst (many tiny keys): fine on the loop.
INLINE_BYTES = 16 * 1024
# How much of the body the glance at its first members reads.
_GLANCE_BYTES = 4096
_SCALAR = json.JSONDecoder()


def _skip_space(text: str, at: int) -> int:
    return len(text) - len(text[at:].lstrip(" \t\n\r"))


def glance_app_id(body: bytes) -> str | None:
    """Return the top-level `appId` when it comes before any object or array member; else None.

    Every go-infer client sends `appId` first. Reading stops at the first
    container value (usually `data`) and within the body's first 4 KiB, so this
    costs microseconds whatever the body holds; None only means "not seen",
    and the full parse decides.
    """
    text = body[:_GLANCE_BYTES].decode("utf-8", "replace")
    at = _skip_space(text, 0)
    if not text.startswith("{", at):
        return None
    try:
        while True:
            at = _skip_space(text, at + 1)
            if not text.startswith('"', at):
                return None
            key, at = scanstring(text, at + 1)
            at = _skip_space(text, at)
            if not text.startswith(":", at):
                return None
            at = _skip_space(text, at + 1)
            if text.startswith(("{", "["), at):
                return None
            value, at = _SCALAR.raw_decode(text, at)
            if key == "appId":
                return value if isinstance(value, str) else None
            at = _skip_space(text, at)
            if not text.startswith(",", at):
                return None
    except ValueError:  # cut off by the glance, or not JSON: the full parse will say
        return None


async def off_loop_if_large(size: int, func: Callable[..., T], *args: object) -> T:
    """Call `func(*args)` inline for a small body, in a thread for one over INLINE_BYTES."""
    if size > INLINE_BYTES:
        return await asyncio.to_thread(func, *args)
    return func(*args)


async def read_request(body: bytes, *, max_bytes: int) -> SignedRequest:
    """Refuse an oversized body or a malformed leading appId, then parse (off the loop when big)."""
    if len(body) > max_bytes:
        raise SignedApiError(Code.BODY_TOO_LARGE, f"the body is larger than {max_bytes} bytes")
    app_id = glance_app_id(body)
    if app_id is not None and not valid_app_id(app_id):
        raise SignedApiError(Code.BAD_FIELD, f"malformed field: appId ({APP_ID_RULE})")
    return await off_loop_if_large(len(body), parse_request, body)
