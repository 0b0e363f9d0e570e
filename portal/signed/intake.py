"""Take a signed request's body in: the caller first, then the body, big parses off the event loop.

Unauthenticated clients choose the body, and checking and canonicalising a
1 MiB one costs a tenth of a second or more, so the work goes cheapest first:
a body declared as anything but JSON is refused (9801); the size is capped
(9809); the appId is read at a glance, from the body's leading or trailing
scalar members, and looked up, so that an unknown app is
refused (9805) before the body is parsed at all; only when the glance cannot
see it is the body parsed first — once, and that parse is reused — and still
looked up before it is canonicalised. Parsing and canonicalising run in a
thread when the body is larger than INLINE_BYTES, so that one big body does
not stall every stream the process is serving.

This module imports no Django.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any, TypeVar

from portal.signed.envelope import (
    Code,
    SignedApiError,
    SignedRequest,
    app_id_of,
    check_fields,
    decode_fields,
    valid_app_id,
)
from registry.models import APP_ID_RULE

T = TypeVar("T")
App = TypeVar("App")

# Parsing and canonicalising this much takes ~2 ms at worst (many tiny keys): fine on the loop.
INLINE_BYTES = 16 * 1024
# application/json and its structured-syntax kin (application/problem+json and the like).
JSON_MEDIA_TYPE = re.compile(r"^application/([\w.+-]+\+)?json$")
# How much of each end of the body the glance reads.
_GLANCE_BYTES = 4096
_SCALAR = json.JSONDecoder()
# The body's last member, when it is `"appId": "<no quote or backslash>"`: in a JSON document that
# ends there, this member can only belong to the top-level object.
_TRAILING_APP_ID = re.compile(rb',[ \t\n\r]*"appId"[ \t\n\r]*:[ \t\n\r]*"([^"\\]*)"[ \t\n\r]*}[ \t\n\r]*\Z')


def _skip_space(text: str, at: int) -> int:
    return len(text) - len(text[at:].lstrip(" \t\n\r"))


def glance_app_id(body: bytes) -> str | None:
    """Return the top-level `appId` when it is the last member or comes before any container; else None.

    Every go-infer client sends `appId` first; a client that builds the body
    as `{**envelope, "appId": ...}` sends it last. Reading stops at the first
    container value (usually `data`) and within 4 KiB of either end, so this
    costs microseconds whatever the body holds; None only means "not seen",
    and the full parse decides.
    """
    leading = _leading_app_id(body)
    return leading if leading is not None else _trailing_app_id(body)


def _trailing_app_id(body: bytes) -> str | None:
    found = _TRAILING_APP_ID.search(body[-_GLANCE_BYTES:])
    return found[1].decode("utf-8", "replace") if found else None


def _leading_app_id(body: bytes) -> str | None:
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


async def read_request(
    body: bytes, *, content_type: str, max_bytes: int, find_app: Callable[[str], Awaitable[App]]
) -> tuple[App, SignedRequest]:
    """Refuse a non-JSON or oversized body, find the caller, then parse and check it (off the loop when big).

    `find_app(app_id)` returns the app or raises (9805 for an unknown one); it
    is awaited before the body is parsed whenever the glance sees the appId.
    """
    check_content_type(content_type)
    if len(body) > max_bytes:
        raise SignedApiError(Code.BODY_TOO_LARGE, f"the body is larger than {max_bytes} bytes")
    app_id = glance_app_id(body)
    fields = None
    if app_id is None:
        fields = await off_loop_if_large(len(body), decode_fields, body)
        app_id = app_id_of(fields)
    elif not valid_app_id(app_id):
        raise SignedApiError(Code.BAD_FIELD, f"malformed field: appId ({APP_ID_RULE})")
    app = await find_app(app_id)
    request = await off_loop_if_large(len(body), _read_fields, body, fields)
    if request.app_id != app_id:  # a duplicate key: the glance saw the first, the parse kept the last
        raise SignedApiError(Code.BAD_FIELD, "malformed field: appId (given twice, with different values)")
    return app, request


def check_content_type(content_type: str) -> None:
    """Refuse a body declared as anything but JSON (9801); a body declared as nothing is read as JSON."""
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type and not JSON_MEDIA_TYPE.match(media_type):
        raise SignedApiError(Code.BAD_FIELD, f"the body is sent as {media_type}; send it as application/json")


def _read_fields(body: bytes, fields: dict[str, Any] | None) -> SignedRequest:
    return check_fields(decode_fields(body) if fields is None else fields, size=len(body))
