"""The body's way in: size cap, appId form before any lookup, the app before the body, no 500."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from portal.signed import intake, policies, service
from portal.signed.client import sign_body
from portal.signed.intake import INLINE_BYTES, glance_app_id
from registry.services.credentials import CredentialSnapshot
from tests.signed.conftest import App, post

pytestmark = pytest.mark.django_db(transaction=True)

ENVELOPE = b'"signType": "SHA256", "signData": "x", "timestamp": 1'
PADDING = "p" * (INLINE_BYTES + 1)


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every app lookup the service makes."""
    seen: list[str] = []
    real = service.aget_credential

    async def recording(app_id: str) -> CredentialSnapshot | None:
        seen.append(app_id)
        return await real(app_id)

    monkeypatch.setattr(service, "aget_credential", recording)
    return seen


def test_default_body_cap_is_one_mebibyte(settings) -> None:
    assert settings.SIGNED_MAX_BODY_BYTES == 1024 * 1024


async def test_body_over_the_cap_is_refused_with_9809_and_nothing_is_looked_up(
    app: App, settings, lookups: list[str]
) -> None:
    body = app.body({"text": "x" * 2000})
    raw = json.dumps(body).encode()
    settings.SIGNED_MAX_BODY_BYTES = len(raw) - 1

    refused = await post("echo", raw)
    settings.SIGNED_MAX_BODY_BYTES = len(raw)
    accepted = await post("echo", raw)

    assert refused["code"] == 9809
    assert str(len(raw) - 1) in refused["data"]["msg"]
    assert refused["appId"] == ""
    assert accepted["code"] == 0
    assert lookups == [app.app_id]


async def test_body_over_the_cap_that_is_not_json_is_still_9809(settings) -> None:
    settings.SIGNED_MAX_BODY_BYTES = 100

    assert (await post("echo", b"\xff" * 101))["code"] == 9809


@pytest.mark.parametrize(
    "app_id",
    ["a" * 129, "", "has space", "<script>", "caf\u00e9", "a/b", "\\ud800", "x\\u0000"],
)
@pytest.mark.parametrize("first", [True, False], ids=["appId-first", "appId-after-data"])
async def test_malformed_app_id_is_9801_without_any_lookup(
    app_id: str, first: bool, lookups: list[str]
) -> None:
    app_field = b'"appId": "' + app_id.encode() + b'"'
    members = [app_field, b'"data": {}', ENVELOPE] if first else [b'"data": {}', ENVELOPE, app_field]

    reply = await post("echo", b"{" + b", ".join(members) + b"}")

    assert reply["code"] == 9801
    assert "appId" in reply["data"]["msg"]
    assert lookups == []


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
async def test_a_body_sent_as_anything_but_json_is_9801_without_any_lookup(
    content_type: str, lookups: list[str]
) -> None:
    reply = await post("echo", b'{"appId": "some-app", "data": {}}', content_type=content_type)

    assert reply["code"] == 9801
    assert content_type in reply["data"]["msg"]
    assert "application/json" in reply["data"]["msg"]
    assert lookups == []


@pytest.mark.parametrize(
    "content_type", ["", "application/json", "Application/JSON; charset=utf-8", "application/vnd.x+json"]
)
def test_json_or_undeclared_bodies_are_read(content_type: str) -> None:
    intake.check_content_type(content_type)  # no refusal


async def test_well_formed_app_ids_reach_the_lookup(lookups: list[str]) -> None:
    for app_id in ("3EA25569454745D01219080B779F021F", "a" * 128, "app-1.prod_2"):
        reply = await post(
            "echo", sign_body({"appId": app_id, "timestamp": int(time.time()), "data": {}}, secret="x")
        )
        assert reply["code"] == 9805

    assert lookups == ["3EA25569454745D01219080B779F021F", "a" * 128, "app-1.prod_2"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"appId": "abc", "data": {}}', "abc"),
        (b' \n{ "version" : "1", "timestamp": 12, "appId":"abc"}', "abc"),
        (b'{"app\\u0049d": "abc"}', "abc"),
        (b'{"data": {"appId": "inner"}, "appId": "outer"}', "outer"),
        (b'{"appId": 5}', None),
        (b"[1]", None),
        (b'{"x": "' + b"y" * 5000 + b'", "appId": "late"}\n', "late"),
        (b'{"data": {}, "appId": "middle", "signType": "SHA256"}', None),
        (b'{"data": {"x": 1, "appId": "inner"}}', None),
        (b'{"data": "\\", "appId": "x\\"}', None),
        (b'{"appId": "unterminated', None),
        (b"", None),
    ],
)
def test_glance_reads_the_leading_scalar_members_and_the_last_one(body: bytes, expected: str | None) -> None:
    assert glance_app_id(body) == expected


def _record_threads(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    threads: list[int] = []
    real = getattr(module, name)

    def recording(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(module, name, recording)
    return threads


async def test_a_large_body_is_parsed_and_verified_off_the_event_loop(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    parses = _record_threads(monkeypatch, intake, "_read_fields")
    verifications = _record_threads(monkeypatch, policies, "_sha256_matches")
    loop_thread = threading.get_ident()

    small = await post("echo", app.body({"text": "small"}))
    large = await post("echo", app.body({"text": PADDING}))

    assert (small["code"], large["code"]) == (0, 0)
    assert large["data"]["echo"]["text"] == PADDING
    assert parses[0] == loop_thread
    assert verifications[0] == loop_thread
    assert parses[1] != loop_thread
    assert verifications[1] != loop_thread


# Bodies of the test's app (tests.signed.conftest): an unknown app is refused before its body is read.
APP = b'"appId": "app-under-test"'


def _nested(depth: int) -> bytes:
    return b"{" + APP + b', "data": {"x": ' + b"[" * depth + b"]" * depth + b"}, " + ENVELOPE + b"}"


HOSTILE = pytest.mark.parametrize(
    "raw",
    [
        _nested(900),
        _nested(100_000),
        b"{" + APP + b', "data": {"x": 1e999}, ' + ENVELOPE + b"}",
        b"{" + APP + b', "data": {"x": -Infinity}, ' + ENVELOPE + b"}",
        b"{" + APP + b', "data": {"x": ' + b"9" * 5000 + b"}, " + ENVELOPE + b"}",
        b"{" + APP + b', "data": {"\\udc00": 1}, ' + ENVELOPE + b"}",
        b"{" + APP + b', "data": {"x": "\\ud800", "pad": "' + PADDING.encode() + b'"}, ' + ENVELOPE + b"}",
        b"{" + APP + b', "data": {"x": "\xc3\x28", "pad": "' + PADDING.encode() + b'"}, ' + ENVELOPE + b"}",
        b"{" + APP + b', "timestamp": 1e300, "signType": "SHA256", "signData": "x", "data": {}}',
        b"{" + APP + b', "data": {"x": [1, 2',
        bytes(range(256)) * 100,
        b"",
        b"null",
    ],
    ids=[
        "nested-900",
        "nested-100k-threaded",
        "float-overflow",
        "infinity",
        "huge-int",
        "lone-surrogate-key",
        "lone-surrogate-threaded",
        "invalid-utf8-threaded",
        "timestamp-1e300",
        "truncated",
        "binary",
        "empty",
        "null",
    ],
)


@HOSTILE
async def test_hostile_body_is_9801_never_a_500(app: App, raw: bytes) -> None:
    reply = await post("echo", raw)

    assert reply["code"] == 9801
    assert reply["success"] is False


@HOSTILE
async def test_hostile_body_of_an_unknown_app_is_9805_or_9801_never_a_500(raw: bytes) -> None:
    reply = await post("echo", raw)

    assert reply["code"] == (9805 if APP in raw else 9801)


MIB = 1024 * 1024
# A `data` of about 1 MiB of small numbers: ~0.3 s to parse and canonicalise before the app came first.
BIG_DATA = json.dumps({"x": [1.5] * ((MIB - 1024) // 5)})


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the body parses (JSON decoding) and field checks (canonicalising) the intake makes."""
    counts = {"decode_fields": 0, "check_fields": 0}
    for name in counts:
        real = getattr(intake, name)

        def counting(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            counts[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(intake, name, counting)
    return counts


def _big_body(app_id: str, *, at: str, data: str = BIG_DATA) -> bytes:
    members = {
        "first": [f'"appId": "{app_id}"', f'"data": {data}', ENVELOPE.decode()],
        "last": [ENVELOPE.decode(), f'"data": {data}', f'"appId": "{app_id}"'],
        "middle": [f'"data": {data}', f'"appId": "{app_id}"', ENVELOPE.decode()],
    }[at]
    body = ("{" + ", ".join(members) + "}").encode()
    assert MIB - 2048 < len(body) <= MIB
    return body


@pytest.mark.parametrize("at", ["first", "last"])
async def test_unknown_app_with_a_1_mib_body_is_refused_before_the_body_is_parsed(
    at: str, parses: dict[str, int], lookups: list[str]
) -> None:
    reply = await post("echo", _big_body("nobody", at=at))

    assert reply["code"] == 9805
    assert lookups == ["nobody"]
    assert parses == {"decode_fields": 0, "check_fields": 0}


@pytest.mark.parametrize("at", ["first", "last"])
async def test_unknown_app_is_9805_even_when_the_rest_of_its_1_mib_body_is_not_json(
    app: App, at: str
) -> None:
    # Had the body been parsed, the answer would be 9801: the code shows what was read, whatever the clock.
    garbage = '{"x": [' + "1.5, " * ((MIB - 1024) // 5) + "oops"

    unknown = await post("echo", _big_body("nobody", at=at, data=garbage))
    known = await post("echo", _big_body(app.app_id, at=at, data=garbage))

    assert (unknown["code"], known["code"]) == (9805, 9801)


async def test_app_id_between_members_is_parsed_once_and_not_canonicalised_for_an_unknown_app(
    app: App, parses: dict[str, int]
) -> None:
    refused = await post("echo", _big_body("nobody", at="middle"))
    assert refused["code"] == 9805
    assert parses == {"decode_fields": 1, "check_fields": 0}

    signed = app.body({"text": "hi"})
    accepted = await post("echo", {"data": signed.pop("data"), "appId": signed.pop("appId"), **signed})

    assert accepted["code"] == 0
    assert parses == {"decode_fields": 2, "check_fields": 1}  # the one parse reused


async def test_two_different_app_ids_are_9801_after_the_lookup(app: App, lookups: list[str]) -> None:
    body = json.dumps(app.body({"text": "hi"}))
    # The glance sees the first appId; JSON keeps the last: one request must not name two apps.
    raw = body[:-1] + ', "signType": "SHA256", "appId": "other"}'

    reply = await post("echo", raw.encode())

    assert reply["code"] == 9801
    assert "given twice" in reply["data"]["msg"]
    assert lookups == [app.app_id]
