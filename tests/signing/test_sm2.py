"""SM2-with-SM3 signatures made with gmssl, go-infer's key format and ours."""

from __future__ import annotations

import base64

import pytest
from gmssl import sm2 as gmssl_sm2

from signing import sm2
from tests.signed.conftest import (
    GO_INFER_SM2_PRIVATE_BASE64,
    GO_INFER_SM2_PRIVATE_HEX,
    GO_INFER_SM2_PUBLIC_HEX,
)

MESSAGE = "appId=x&data={}&timestamp=1&key=secret"


def _gmssl_signature(message: str) -> bytes:
    crypt = gmssl_sm2.CryptSM2(private_key=GO_INFER_SM2_PRIVATE_HEX, public_key=GO_INFER_SM2_PUBLIC_HEX)
    return bytes.fromhex(crypt.sign_with_sm3(message.encode("utf-8")))


def test_signature_made_directly_with_gmssl_verifies() -> None:
    signature = _gmssl_signature(MESSAGE)

    assert sm2.verify(MESSAGE, signature, public_key_hex=GO_INFER_SM2_PUBLIC_HEX)


def test_one_byte_changed_in_signature_or_message_fails() -> None:
    signature = bytearray(_gmssl_signature(MESSAGE))
    tampered = bytes(signature[:10]) + bytes([signature[10] ^ 1]) + bytes(signature[11:])

    assert not sm2.verify(MESSAGE, tampered, public_key_hex=GO_INFER_SM2_PUBLIC_HEX)
    assert not sm2.verify(MESSAGE + "x", bytes(signature), public_key_hex=GO_INFER_SM2_PUBLIC_HEX)


def test_deployment_key_from_base64_scalar_gives_go_infer_public_key() -> None:
    private_hex = sm2.private_key_from_base64(GO_INFER_SM2_PRIVATE_BASE64)

    assert private_hex == GO_INFER_SM2_PRIVATE_HEX
    assert sm2.public_key_from_private(private_hex) == GO_INFER_SM2_PUBLIC_HEX


def test_our_signature_is_base64_of_64_bytes_and_verifies() -> None:
    sign_data = sm2.sign_base64(MESSAGE, private_key_hex=GO_INFER_SM2_PRIVATE_HEX)

    raw = base64.b64decode(sign_data)
    assert len(raw) == 64
    assert sm2.verify(MESSAGE, raw, public_key_hex=GO_INFER_SM2_PUBLIC_HEX)
    assert sm2.decode_signature(sign_data) == raw


def test_malformed_signature_data_is_rejected_before_verifying() -> None:
    assert sm2.decode_signature("not base64!") is None
    assert sm2.decode_signature(base64.b64encode(b"short").decode()) is None


def test_public_key_is_normalised_and_checked_on_the_curve() -> None:
    assert sm2.normalize_public_key("04" + GO_INFER_SM2_PUBLIC_HEX.upper()) == GO_INFER_SM2_PUBLIC_HEX
    off_curve = GO_INFER_SM2_PUBLIC_HEX[:-1] + ("7" if GO_INFER_SM2_PUBLIC_HEX[-1] != "7" else "8")
    with pytest.raises(sm2.InvalidKey):
        sm2.normalize_public_key(off_curve)
    with pytest.raises(sm2.InvalidKey):
        sm2.normalize_public_key("04abc")


def test_a_public_key_whose_x_starts_with_04_signs_and_verifies() -> None:
    # gmssl strips a leading "04" from any key it is given: 1 key in 256 lost digits of x,
    # and every request signed with it was refused (9800).
    private = "b75356eafd13d9a17ff75e671ce747b796a9d30e8532f3ab038d6137473a5fb0"
    public = sm2.public_key_from_private(private)
    assert public.startswith("04")
    assert len(public) == 128
    recorded = "aynONhpBrBslenMq3a72I3pTs5+scJKRrRU7UZMx3KBnwJS2Ge02TFHGfZ4G9TuWlqQ1LFh/e+B30GPqmKJdoA=="
    signature = sm2.decode_signature(recorded)
    assert signature is not None
    assert sm2.verify("hello", signature, public_key_hex=public)
    assert not sm2.verify("hellO", signature, public_key_hex=public)
    fresh = sm2.decode_signature(sm2.sign_base64("世界", private_key_hex=private))
    assert fresh is not None
    assert sm2.verify("世界", fresh, public_key_hex=public)
