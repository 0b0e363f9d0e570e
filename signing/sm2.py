"""SM2-with-SM3 signatures as go-infer makes them, on top of gmssl.

go-infer signs with user id `1234567812345678` (gmssl's fixed Z value) and sends
`base64(r || s)`; we pad r and s to 32 bytes each. Public keys are hex of the
uncompressed point, with or without the `04` prefix. No Django here: the client
uses this module too.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import secrets

from gmssl import sm2 as _gmssl_sm2

_CURVE = _gmssl_sm2.default_ecc_table
_P = int(_CURVE["p"], 16)
_N = int(_CURVE["n"], 16)
_A = int(_CURVE["a"], 16)
_B = int(_CURVE["b"], 16)
_HEX = re.compile(r"^[0-9a-fA-F]+$")
SIGNATURE_BYTES = 64


class InvalidKey(ValueError):
    """An SM2 key that is not well formed; the message says what is wrong."""


def _crypt(*, private_key: str, public_key: str) -> _gmssl_sm2.CryptSM2:
    """A gmssl signer/verifier holding exactly `public_key` (128 hex digits).

    gmssl's constructor strips a leading "04" with `lstrip`, so an x coordinate that
    itself starts with 0s and 4s (1 key in 256 starts with "04") lost digits and every
    signature with that key failed: the key is set after construction instead.
    """
    crypt = _gmssl_sm2.CryptSM2(private_key=private_key, public_key="")
    crypt.public_key = public_key
    return crypt


def normalize_public_key(public_key: str) -> str:
    """Return the key as 128 lowercase hex digits (x‖y), checking that the point is on the curve."""
    key = public_key.strip()
    if len(key) == 130 and key[:2] == "04":
        # Strip exactly the prefix: gmssl's own lstrip("04") eats leading 0s and 4s of x too.
        key = key[2:]
    if len(key) != 128 or not _HEX.match(key):
        raise InvalidKey("an SM2 public key is 128 hex digits (x‖y), optionally prefixed by 04")
    x, y = int(key[:64], 16), int(key[64:], 16)
    if x >= _P or y >= _P or (y * y - (x * x * x + _A * x + _B)) % _P != 0:
        raise InvalidKey("the SM2 public key is not a point on the curve")
    return key.lower()


def private_key_from_base64(value: str) -> str:
    """Decode go-infer's `SM2Private` setting (base64 of the 32-byte scalar) to 64 hex digits."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidKey("SM2_PRIVATE_KEY is not valid base64") from exc
    scalar = int.from_bytes(raw, "big")
    if len(raw) > 32 or not 0 < scalar < _N:
        raise InvalidKey("SM2_PRIVATE_KEY must be base64 of a 32-byte scalar below the curve order")
    return f"{scalar:064x}"


@functools.lru_cache(maxsize=64)
def public_key_from_private(private_key_hex: str) -> str:
    """Return the public key (128 hex digits) of a private scalar given in hex (cached: ~6 ms)."""
    crypt = _gmssl_sm2.CryptSM2(private_key=private_key_hex, public_key="")
    return str(crypt._kg(int(private_key_hex, 16), _CURVE["g"]))


def generate_private_key() -> str:
    """Return a fresh private scalar as 64 hex digits."""
    return f"{secrets.randbelow(_N - 1) + 1:064x}"


def sign_base64(message: str, *, private_key_hex: str, public_key_hex: str | None = None) -> str:
    """Sign `message` (UTF-8) with SM2-with-SM3 and return base64 of r‖s (64 bytes)."""
    public = normalize_public_key(public_key_hex or public_key_from_private(private_key_hex))
    crypt = _crypt(private_key=private_key_hex, public_key=public)
    signature = None
    while signature is None:
        # gmssl draws k from `random`, which is not a CSPRNG: pass our own.
        signature = crypt.sign_with_sm3(message.encode("utf-8"), secrets.token_hex(32))
    return base64.b64encode(bytes.fromhex(signature)).decode("ascii")


def decode_signature(sign_data: str) -> bytes | None:
    """Return the 64 raw signature bytes of a base64 `signData`, or None when malformed."""
    try:
        raw = base64.b64decode(sign_data, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == SIGNATURE_BYTES else None


def verify(message: str, signature: bytes, *, public_key_hex: str) -> bool:
    """Check an r‖s signature of `message` against a normalised public key."""
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if not (0 < r < _N and 0 < s < _N):
        return False
    crypt = _crypt(private_key="", public_key=public_key_hex)
    try:
        return bool(crypt.verify_with_sm3(f"{r:064x}{s:064x}", message.encode("utf-8")))
    except (ValueError, TypeError):  # a degenerate point inside gmssl's arithmetic
        return False
