"""The endpoint, through Django's async test client: envelope, every code, replay, limits."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async

from portal.gateway.gateway import current
from portal.signed.client import sign_body
from registry.models import AppCredential, UsageRecord
from registry.services.credentials import create_app_credential, forget_cached_credential
from signing.canonical import sha256_sign_data
from tests.signed.conftest import (
    GO_INFER_APP_ID,
    GO_INFER_SECRET,
    GO_INFER_SM2_PRIVATE_BASE64,
    GO_INFER_SM2_PRIVATE_HEX,
    App,
    post,
)

pytestmark = pytest.mark.django_db(transaction=True)

TEST_PIPELINES = [
    "portal.signed.pipelines.echo.EchoPipeline",
    "portal.signed.pipelines.chat.ChatPipeline",
    "tests.signed.fake_pipelines.SleepPipeline",
    "tests.signed.fake_pipelines.BrokenPipeline",
]


@pytest.fixture(autouse=True)
def _test_pipelines(settings) -> None:
    settings.SIGNED_PIPELINES = TEST_PIPELINES


@pytest.fixture(autouse=True)
async def _usage_written() -> AsyncIterator[None]:
    yield
    # Echo writes usage in the background: finish before the database is flushed.
    await current().usage.flush()


async def test_sha256_request_is_answered_in_go_infer_envelope(app: App) -> None:
    reply = await post("echo", app.body({"text": "测试测试", "n": 1.5}))

    assert reply["code"] == 0
    assert reply["success"] is True
    assert reply["appId"] == app.app_id
    assert reply["signType"] == "plain"
    assert reply["encType"] == "plain"
    assert abs(reply["timestamp"] - time.time()) < 5
    assert reply["data"]["echo"] == {"text": "测试测试", "n": 1.5}
    assert reply["data"]["msg"] == "success"
    assert len(reply["data"]["requestId"]) == 40


async def test_accepted_request_records_when_the_app_was_last_used(app: App) -> None:
    reply = await post("echo", app.body({"text": "hi"}))
    assert reply["code"] == 0

    async def stamped() -> bool:
        credential = await AppCredential.objects.aget(app_id=app.app_id)
        return credential.last_used_at is not None

    for _ in range(50):  # written in the background, off the request path
        if await stamped():
            break
        await asyncio.sleep(0.05)
    assert await stamped()


async def test_sm2_request_with_app_key_is_accepted(app: App) -> None:
    reply = await post("echo", app.body({"text": "hi"}, sign_type="SM2"))

    assert reply["code"] == 0, reply


async def test_sm2_signature_with_one_byte_changed_is_refused(app: App) -> None:
    body = app.body({"text": "hi"}, sign_type="SM2")
    body["data"] = {"text": "hI"}

    reply = await post("echo", body)

    assert reply["code"] == 9800
    assert reply["success"] is False


async def test_sm2_with_deployment_wide_key_is_accepted(settings, transactional_db: None) -> None:
    settings.SM2_PRIVATE_KEY = GO_INFER_SM2_PRIVATE_BASE64
    await sync_to_async(create_app_credential)(app_id=GO_INFER_APP_ID, secret=GO_INFER_SECRET)
    body = {"appId": GO_INFER_APP_ID, "version": "1", "timestamp": int(time.time()), "data": {"t": "x"}}

    signed = sign_body(
        body, secret=GO_INFER_SECRET, sign_type="SM2", sm2_private_key=GO_INFER_SM2_PRIVATE_HEX
    )
    reply = await post("echo", signed)

    assert reply["code"] == 0, reply


async def test_sm2_without_any_public_key_is_not_allowed(transactional_db: None) -> None:
    await sync_to_async(create_app_credential)(app_id="nokey", secret="s3cret-s3cret")
    body = {"appId": "nokey", "timestamp": int(time.time()), "data": {}}

    reply = await post(
        "echo",
        sign_body(body, secret="s3cret-s3cret", sign_type="SM2", sm2_private_key=GO_INFER_SM2_PRIVATE_HEX),
    )

    assert reply["code"] == 9803


async def test_wrong_secret_is_a_bad_signature_and_app_id_is_not_echoed(app: App) -> None:
    body = sign_body({"appId": app.app_id, "timestamp": int(time.time()), "data": {}}, secret="wrong")

    reply = await post("echo", body)

    assert reply["code"] == 9800
    assert reply["appId"] == ""


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"{not json", "JSON"),
        (b"[1, 2]", "JSON"),
        (b'{"appId": "a", "signData": "x", "timestamp": 1, "data": {"x": NaN}}', "JSON"),
        (b'{"appId": "a", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}", "JSON"),
        (b'{"appId": "\\ud800", "signType": "SHA256", "signData": "x", "timestamp": 1, "data": {}}', "appId"),
        (b'{"appId": "a", "data": {"x": "\xff"}}', "JSON"),
        (b'{"signType": "SHA256", "signData": "x", "timestamp": 1, "data": {}}', "appId"),
        (b'{"appId": "a", "signType": "SHA256", "signData": "x", "timestamp": "1", "data": {}}', "timestamp"),
        (b'{"appId": "a", "signType": "SHA256", "signData": "x", "timestamp": 1, "data": []}', "data"),
        (b'{"appId": "a", "signType": "SHA256", "timestamp": 1, "data": {}}', "signData"),
        (b'{"appId": "a", "signType": 5, "signData": "x", "timestamp": 1, "data": {}}', "signType"),
        (b'{"appId": "a", "signType": "SHA256", "signData": "x", "timestamp": true}', "timestamp"),
    ],
)
async def test_malformed_or_missing_field_is_9801_naming_it(app: App, raw: bytes, field: str) -> None:
    # The bodies name the test's app: an unknown one is refused (9805) before its body is read.
    reply = await post("echo", raw.replace(b'"appId": "a"', b'"appId": "%s"' % app.app_id.encode()))

    assert reply["code"] == 9801
    assert field in reply["data"]["msg"]


# 10 s past the 300 s window: a timestamp 301 s ahead, truncated to whole seconds and checked a
# moment later, may fall back inside it.
@pytest.mark.parametrize("offset", [-310, 310, -100000])
async def test_timestamp_outside_window_is_9802(app: App, offset: int) -> None:
    reply = await post("echo", app.body({}, timestamp=int(time.time()) + offset))

    assert reply["code"] == 9802


async def test_timestamp_inside_window_is_accepted(app: App) -> None:
    reply = await post("echo", app.body({}, timestamp=int(time.time()) - 250))

    assert reply["code"] == 0


async def test_plain_is_refused_unless_app_allows_it(app: App) -> None:
    refused = await post("echo", app.body({}, sign_type="plain"))
    await AppCredential.objects.filter(pk=app.credential_id).aupdate(allow_plain=True)
    forget_cached_credential()
    accepted = await post("echo", app.body({"x": 1}, sign_type="plain"))

    assert refused["code"] == 9803
    assert accepted["code"] == 0
    assert accepted["data"]["echo"] == {"x": 1}


async def test_unknown_sign_type_is_9803(app: App) -> None:
    body = app.body({})
    body["signType"] = "MD5"

    assert (await post("echo", body))["code"] == 9803


async def test_unknown_or_disabled_app_is_9805(app: App) -> None:
    unknown = sign_body({"appId": "nobody", "timestamp": int(time.time()), "data": {}}, secret="x")
    assert (await post("echo", unknown))["code"] == 9805
    # The app is looked up first: its other fields are not even read.
    assert (await post("echo", b'{"appId": "nobody", "timestamp": "soon"}'))["code"] == 9805

    await AppCredential.objects.filter(pk=app.credential_id).aupdate(enabled=False)
    forget_cached_credential()
    assert (await post("echo", app.body({})))["code"] == 9805


async def test_version_other_than_1_is_9806(app: App) -> None:
    assert (await post("echo", app.body({}, version="2")))["code"] == 9806


async def test_version_may_be_left_out(app: App) -> None:
    body = app.body({})
    del body["version"]
    resigned = sign_body(body, secret=app.secret)

    assert (await post("echo", resigned))["code"] == 0


async def test_exact_replay_inside_window_is_9804(app: App) -> None:
    body = app.body({"text": "once"})

    first = await post("echo", body)
    second = await post("echo", body)

    assert first["code"] == 0
    assert second["code"] == 9804


async def test_concurrent_replays_let_exactly_one_through(app: App) -> None:
    body = app.body({"text": "race"})

    replies = await asyncio.gather(*(post("echo", body) for _ in range(5)))

    assert sorted(r["code"] for r in replies) == [0, 9804, 9804, 9804, 9804]


async def test_extra_top_level_keys_are_signed(app: App) -> None:
    body = app.body({}, extra="value", count=3)
    assert (await post("echo", body))["code"] == 0

    tampered = app.body({}, extra="value")
    tampered["extra"] = "other"
    assert (await post("echo", tampered))["code"] == 9800


async def test_unknown_pipeline_is_9709(app: App) -> None:
    assert (await post("nope", app.body({})))["code"] == 9709


async def test_pipeline_outside_allow_list_is_9808(app: App) -> None:
    await AppCredential.objects.filter(pk=app.credential_id).aupdate(allowed_pipelines=["chat"])

    assert (await post("echo", app.body({})))["code"] == 9808


async def test_requests_beyond_rate_limit_are_9807(app: App) -> None:
    await AppCredential.objects.filter(pk=app.credential_id).aupdate(requests_per_minute=2)

    codes = [(await post("echo", app.body({"i": i})))["code"] for i in range(3)]

    assert codes == [0, 0, 9807]


async def test_params_refused_by_pipeline_is_9701_with_reason(app: App) -> None:
    reply = await post("chat", app.body({"temperature": 0}))

    assert reply["code"] == 9701
    assert "messages or prompt" in reply["data"]["msg"]
    assert reply["appId"] == app.app_id


async def test_a_parameter_too_large_for_a_float_is_refused_with_9701_not_a_crash(app: App) -> None:
    reply = await post("chat", app.body({"prompt": "hi", "model": "tiny", "temperature": 10**400}))

    assert reply["code"] == 9701
    assert "temperature" in reply["data"]["msg"]


async def test_result_not_ready_within_message_timeout_is_9997(app: App, settings) -> None:
    settings.SIGNED_MESSAGE_TIMEOUT = 0.2

    reply = await post("sleep", app.body({"seconds": 2}))

    assert reply["code"] == 9997


async def test_max_workers_queues_requests_and_the_wait_counts_toward_timeout(app: App, settings) -> None:
    settings.SIGNED_MAX_WORKERS = 1
    settings.SIGNED_MESSAGE_TIMEOUT = 0.5

    replies = await asyncio.gather(*(post("sleep", app.body({"seconds": 0.35, "i": i})) for i in range(2)))

    assert sorted(r["code"] for r in replies) == [0, 9997]


async def test_pipeline_init_runs_once(app: App) -> None:
    from tests.signed.fake_pipelines import SleepPipeline

    before = SleepPipeline.init_calls
    await asyncio.gather(*(post("sleep", app.body({"i": i})) for i in range(3)))

    assert SleepPipeline.init_calls - before <= 1


async def test_failed_inference_is_9998_and_a_crash_does_not_leak_details(app: App) -> None:
    failed = await post("broken", app.body({}))
    crashed = await post("broken", app.body({"crash": True}))

    assert failed["code"] == 9998
    assert failed["data"]["msg"] == "the model could not answer"
    assert crashed["code"] == 9998
    assert "internal detail" not in crashed["data"]["msg"]


async def test_echo_request_is_recorded_as_signed_usage_of_the_app(app: App) -> None:
    reply = await post("echo", app.body({"text": "count me"}))
    await current().usage.flush()

    record = await UsageRecord.objects.aget(request_id=reply["data"]["requestId"])
    assert record.source == "signed"
    assert record.app_credential_id == app.credential_id
    assert record.endpoint == "echo"


def _go_infer_python_client_sign(body: dict, secret: str) -> str:
    """go-infer's examples/test_api.py signer, restated: top-level empty strings are left out."""
    param = dict(body)
    param["data"] = json.dumps(param["data"], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    text = "&".join(f"{k}={param[k]}" for k in sorted(param) if str(param[k]) != "")
    return sha256_sign_data(f"{text}&key={secret}")


async def test_go_infer_python_client_body_with_empty_field_is_accepted(app: App) -> None:
    body = {
        "appId": app.app_id,
        "version": "1",
        "signType": "SHA256",
        "encType": "",
        "timestamp": int(time.time()),
        "data": {"text": "a < b & 测试"},
    }
    body["signData"] = _go_infer_python_client_sign(body, app.secret)

    reply = await post("echo", body)

    assert reply["code"] == 0, reply
    assert reply["data"]["echo"] == {"text": "a < b & 测试"}


async def test_go_server_style_escaped_data_signature_is_accepted(app: App) -> None:
    body = {"appId": app.app_id, "timestamp": int(time.time()), "data": {"q": "<b>"}}
    go_string = (
        f'appId={app.app_id}&data={{"q":"\\u003cb\\u003e"}}&signType=SHA256'
        f"&timestamp={body['timestamp']}&key={app.secret}"
    )
    body |= {"signType": "SHA256", "signData": sha256_sign_data(go_string)}

    assert (await post("echo", body))["code"] == 0
