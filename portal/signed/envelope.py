"""The go-infer envelope: result codes, request parsing and response bodies.

Every answer is HTTP 200 with a `code`, like go-infer; `success` is true for
code 0 only. Codes beyond go-infer's are marked below and documented in
README.md.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from registry.models import APP_ID_PATTERN, APP_ID_RULE
from signing.canonical import canonical_string


class Code(IntEnum):
    OK = 0
    BAD_SIGNATURE = 9800
    BAD_FIELD = 9801
    TIMESTAMP_OUTSIDE_WINDOW = 9802
    SIGN_TYPE_NOT_ALLOWED = 9803
    REPLAYED = 9804  # ours: the same signData was accepted earlier inside the window
    UNKNOWN_APP = 9805
    BAD_VERSION = 9806
    RATE_LIMITED = 9807  # ours: the app's requests_per_minute is used up
    PIPELINE_NOT_ALLOWED = 9808  # ours: the app may not call this pipeline
    BODY_TOO_LARGE = 9809  # ours: the body is over SIGNED_MAX_BODY_BYTES
    PARAMS_REFUSED = 9701
    UNKNOWN_PIPELINE = 9709
    TIMEOUT = 9997
    INFERENCE_FAILED = 9998


# What each code means, for the OpenAPI schema (README.md has the same table).
CODE_MEANINGS: dict[Code, str] = {
    Code.OK: "success",
    Code.BAD_SIGNATURE: "bad signature",
    Code.BAD_FIELD: "missing, wrong-typed or malformed field (the message names it), or a body that is "
    "not JSON or not sent as application/json",
    Code.TIMESTAMP_OUTSIDE_WINDOW: "timestamp more than SIGNED_TIMESTAMP_WINDOW seconds from the server time",
    Code.SIGN_TYPE_NOT_ALLOWED: "signType unknown or not allowed for this app",
    Code.REPLAYED: "replay: this exact signature was accepted before, inside the window",
    Code.UNKNOWN_APP: "unknown or disabled app",
    Code.BAD_VERSION: 'version other than "1"',
    Code.RATE_LIMITED: "a limit of the app: requests or tokens per minute, requests in flight",
    Code.PIPELINE_NOT_ALLOWED: "the app may not call this pipeline",
    Code.BODY_TOO_LARGE: "the body is larger than SIGNED_MAX_BODY_BYTES (refused before parsing)",
    Code.PARAMS_REFUSED: "the pipeline refused the parameters (the message says why)",
    Code.UNKNOWN_PIPELINE: "unknown pipeline",
    Code.TIMEOUT: "no result within SIGNED_MESSAGE_TIMEOUT",
    Code.INFERENCE_FAILED: "inference failed",
}

_APP_ID = re.compile(APP_ID_PATTERN)


def valid_app_id(value: str) -> bool:
    """Whether `value` has the form of an appId (checked before any lookup, so nothing else is cached)."""
    return _APP_ID.match(value) is not None


class SignedApiError(Exception):
    """A refusal to report in the envelope: a code and a message for the caller."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SignedRequest:
    """The checked top-level fields of a request; `fields` keeps every key for signing."""

    app_id: str
    sign_type: str
    sign_data: str
    timestamp: int
    data: dict[str, Any]
    fields: dict[str, Any]
    size: int = 0  # of the body in bytes: policies verify a large one off the event loop

    def check_version(self) -> None:
        """Refuse a version other than "1" (absent means 1, where go-infer insists on it)."""
        if self.fields.get("version", "1") != "1":
            raise SignedApiError(Code.BAD_VERSION, "unsupported version: only version 1 is known")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: a number no signer can write back
        raise ValueError(f"{text} is out of range")
    return value


def _require(fields: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = fields.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise SignedApiError(Code.BAD_FIELD, f"missing or wrong-typed field: {key}")
    return value


def decode_fields(body: bytes) -> dict[str, Any]:
    """Parse the body into its top-level fields; 9801 when it is not a JSON object."""
    try:
        # NaN and Infinity are not JSON, and could not be signed.
        fields = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise SignedApiError(Code.BAD_FIELD, "the body is not a valid JSON object") from exc
    if not isinstance(fields, dict):
        raise SignedApiError(Code.BAD_FIELD, "the body is not a valid JSON object")
    return fields


def app_id_of(fields: dict[str, Any]) -> str:
    """Return the well-formed appId of parsed fields, or refuse it (9801)."""
    app_id = _require(fields, "appId", str)
    if not valid_app_id(app_id):
        raise SignedApiError(Code.BAD_FIELD, f"malformed field: appId ({APP_ID_RULE})")
    return str(app_id)


def check_fields(fields: dict[str, Any], *, size: int) -> SignedRequest:
    """Type-check parsed fields and make sure they can be signed; raise 9801 naming the first bad one.

    Canonicalising is the costly part of reading a body (several times the
    parse), which is why the caller looks the app up first.
    """
    app_id = app_id_of(fields)
    try:
        # What cannot be signed (too deep, lone surrogates) is refused here, not in a policy.
        canonical_string(fields, "").encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:
        raise SignedApiError(Code.BAD_FIELD, "the body is not a valid JSON object") from exc
    sign_type = _require(fields, "signType", str)
    # A plain request has nothing to sign; go-infer clients still send the key.
    sign_data = fields.get("signData", "") if sign_type == "plain" else _require(fields, "signData", str)
    if not isinstance(sign_data, str):
        raise SignedApiError(Code.BAD_FIELD, "missing or wrong-typed field: signData")
    timestamp = _require(fields, "timestamp", (int, float))
    data = _require(fields, "data", dict)
    for optional in ("version", "encType"):
        if optional in fields and not isinstance(fields[optional], str):
            raise SignedApiError(Code.BAD_FIELD, f"missing or wrong-typed field: {optional}")
    if timestamp != timestamp or abs(timestamp) > 2**62:  # NaN or absurd
        raise SignedApiError(Code.BAD_FIELD, "missing or wrong-typed field: timestamp")
    return SignedRequest(
        app_id=app_id,
        sign_type=sign_type,
        sign_data=sign_data,
        timestamp=int(timestamp),
        data=data,
        fields=fields,
        size=size,
    )


def _envelope(app_id: str, code: int, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "appId": app_id,
        "code": int(code),
        "success": code == Code.OK,
        "timestamp": int(time.time()),
        "signType": "plain",
        "encType": "plain",
        "data": data,
    }


def success_body(*, app_id: str, request_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """Wrap a pipeline result; `msg` and `requestId` are added as go-infer does."""
    return _envelope(app_id, Code.OK, {**result, "msg": "success", "requestId": request_id})


def error_body(*, app_id: str, request_id: str, code: Code, message: str) -> dict[str, Any]:
    """Describe a refusal or failure in the envelope (still HTTP 200, like go-infer)."""
    return _envelope(app_id, code, {"msg": message, "requestId": request_id})
