"""The string to sign and go-infer's SHA256 test vector."""

from __future__ import annotations

import pytest

from portal.signed.client import sign_body
from signing.canonical import candidate_strings, canonical_string, format_number, sha256_sign_data
from tests.signed.conftest import GO_INFER_APP_ID, GO_INFER_SECRET

VECTOR_BODY = {
    "appId": GO_INFER_APP_ID,
    "version": "1",
    "signType": "SHA256",
    "encType": "plain",
    "timestamp": 1658716494,
    "data": {"text": "测试测试", "image": ""},
}
VECTOR_SIGNATURE = "YTY4YzFiODUyYTY1MDMxNGFmYWFkNjg0ZjM2NTJjMzM2YzliOTY5ZTk0MzgyNWEyOTM4MGI1MTZkZTc0NmVjZQ=="


def test_go_infer_test_vector_is_reproduced() -> None:
    signed = sign_body(VECTOR_BODY, secret=GO_INFER_SECRET)

    assert signed["signData"] == VECTOR_SIGNATURE
    assert len(signed["signData"]) == 88


def test_string_sorts_keys_writes_data_compact_and_raw_utf8() -> None:
    text = canonical_string({**VECTOR_BODY, "signData": "ignored"}, GO_INFER_SECRET)

    assert text == (
        f'appId={GO_INFER_APP_ID}&data={{"image":"","text":"测试测试"}}&encType=plain'
        f"&signType=SHA256&timestamp=1658716494&version=1&key={GO_INFER_SECRET}"
    )


def test_float_timestamp_is_signed_as_integer_like_go_infer() -> None:
    as_float = canonical_string({**VECTOR_BODY, "timestamp": 1658716494.9}, "s")

    assert "timestamp=1658716494&" in as_float


def test_booleans_nulls_and_arrays_at_top_level_are_left_out() -> None:
    text = canonical_string({"a": True, "b": None, "c": [1], "d": "x", "e": 2.50, "data": {}}, "s")

    assert text == "d=x&data={}&e=2.5&key=s"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (0.7, "0.7"),
        (100.0, "100"),
        (1e-7, "1e-7"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
    ],
)
def test_numbers_take_go_shortest_form(value: float, expected: str) -> None:
    assert format_number(value) == expected


def test_nested_data_sorts_keys_and_writes_go_numbers() -> None:
    text = canonical_string({"data": {"z": [1.0, {"b": 2, "a": "é"}], "a": 0.5}}, "s")

    assert text == 'data={"a":0.5,"z":[1,{"a":"é","b":2}]}&key=s'


def test_empty_string_is_signed_as_empty_value_with_python_client_form_as_alternative() -> None:
    fields = {"appId": "x", "encType": "", "data": {"q": "<b>"}}

    candidates = list(candidate_strings(fields, "s"))

    assert candidates[0] == 'appId=x&data={"q":"<b>"}&encType=&key=s'
    assert 'appId=x&data={"q":"<b>"}&key=s' in candidates  # go-infer's Python client
    assert 'appId=x&data={"q":"\\u003cb\\u003e"}&encType=&key=s' in candidates  # Go's json.Marshal


def test_sha256_sign_data_is_base64_of_lowercase_hex() -> None:
    import base64
    import hashlib

    assert base64.b64decode(sha256_sign_data("abc")).decode() == hashlib.sha256(b"abc").hexdigest()
