"""A worker that refuses the portal's token (401/403) is the worker's fault, never the client's.

Against a fake upstream (gateway logic only): the request fails over to
another worker, the refusing one is excluded and counted in /metrics, a
warning names it at most once a minute and never shows the token, and with
no worker left the client gets 503 no_worker_available, not 401.
"""

from __future__ import annotations

import logging

import httpx2
import pytest
from asgiref.sync import sync_to_async
from prometheus_client import REGISTRY

from portal.gateway import relay, worker_calls
from portal.gateway.gateway import current
from registry.models import WorkerKind
from tests.gateway.conftest import add_worker, chat_result, chunk, sse

pytestmark = pytest.mark.django_db(transaction=True)
BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}
TOKEN = "portal-token-never-logged"
REFUSAL = {"error": {"message": "bad token", "type": "invalid_request_error", "code": "invalid_worker_token"}}


def auth_failures(worker: str) -> float:
    return REGISTRY.get_sample_value("portal_worker_auth_failures_total", {"worker": worker}) or 0.0


def refused_by(bad: str, status: int = 401, answer: bytes | None = None):
    """Every worker answers, but `bad` refuses the portal's token with `status`."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.host == bad:
            return httpx2.Response(status, json=REFUSAL)
        if answer is not None:
            return httpx2.Response(200, content=answer)
        return httpx2.Response(200, json=chat_result())

    return handler


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refusing_worker_is_failed_over_excluded_and_counted(
    served_model, upstream, settings, status
):
    settings.WORKER_TOKEN = TOKEN
    bad = await sync_to_async(add_worker)(served_model, f"bad{status}")
    good = await sync_to_async(add_worker)(served_model, "good")
    current().counters.acquire(good.id)  # least in flight tries the bad worker first
    before = auth_failures(bad.identity)
    seen = upstream(refused_by(bad.identity, status))

    assert (await relay.chat_completion(dict(BODY), caller=relay.Caller()))["choices"]
    assert [r.url.host for r in seen] == [bad.identity, "good"]
    assert current().counters.is_excluded(bad.id)
    assert not current().counters.is_excluded(good.id)
    assert auth_failures(bad.identity) == before + 1

    seen.clear()
    assert (await relay.chat_completion(dict(BODY), caller=relay.Caller()))["choices"]
    assert [r.url.host for r in seen] == ["good"]  # excluded: not asked again for a while


async def test_a_stream_fails_over_from_a_refusing_worker_before_its_first_event(served_model, upstream):
    bad = await sync_to_async(add_worker)(served_model, "bad")
    good = await sync_to_async(add_worker)(served_model, "good")
    current().counters.acquire(good.id)
    seen = upstream(refused_by("bad", answer=sse(chunk("a"), chunk("b"))))
    stream = await relay.stream_chat_completion({**BODY, "stream": True}, caller=relay.Caller())
    assert [c["choices"][0]["delta"]["content"] async for c in stream if c["choices"]] == ["a", "b"]
    assert [r.url.host for r in seen] == ["bad", "good"]
    assert stream.worker_identity == "good"
    assert current().counters.is_excluded(bad.id)


async def test_with_every_worker_refusing_the_client_gets_503_not_401(served_model, upstream, settings):
    settings.GATEWAY_MAX_ATTEMPTS = 1  # a refusal costs no attempt: every worker is still asked
    workers = [await sync_to_async(add_worker)(served_model, name) for name in ("w1", "w2", "w3")]
    seen = upstream(lambda r: httpx2.Response(401, json=REFUSAL))
    with pytest.raises(relay.GatewayError) as info:
        await relay.chat_completion(dict(BODY), caller=relay.Caller())
    error = info.value
    assert (error.status_code, error.code, error.retry_after) == (503, "no_worker_available", 2)
    assert "No worker could serve this request" in error.to_openai()["error"]["message"]
    assert sorted(r.url.host for r in seen) == ["w1", "w2", "w3"]
    assert all(current().counters.is_excluded(w.id) for w in workers)


async def test_a_refusal_is_logged_once_a_minute_per_worker_and_never_with_the_token(
    served_model, upstream, settings, caplog
):
    settings.WORKER_TOKEN = TOKEN
    bad = await sync_to_async(add_worker)(served_model, "bad")
    remote = await sync_to_async(add_worker)(
        served_model, "remote", kind=WorkerKind.REMOTE, remote_api_key="rk-never-logged"
    )
    good = await sync_to_async(add_worker)(served_model, "good")
    current().counters.acquire(good.id)
    current().counters.acquire(good.id)  # the two refusing workers are tried first
    upstream(
        lambda r: (
            httpx2.Response(401)
            if r.url.host in ("bad", "remote")
            else httpx2.Response(200, json=chat_result())
        )
    )
    with caplog.at_level(logging.WARNING, logger="portal.gateway.upstream"):
        for _ in range(3):
            current().counters.forget_exclusions()  # the refusing workers are asked again
            current().counters.acquire(good.id)
            current().counters.acquire(good.id)
            assert (await relay.chat_completion(dict(BODY), caller=relay.Caller()))["choices"]
    warnings = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert any("bad at http://bad:9000 refused the portal's WORKER_TOKEN" in w for w in warnings)
    assert any("remote at http://remote:9000 refused its remote_api_key" in w for w in warnings)
    assert not any(TOKEN in w or "rk-never-logged" in w for w in caplog.text.splitlines())
    assert auth_failures(bad.identity) >= 3
    assert auth_failures(remote.identity) >= 3


def test_the_portal_passes_on_no_prefill_workers_to_a_remote_endpoint():
    from registry.services.dispatch import WorkerSnapshot

    remote = WorkerSnapshot(
        id=1, identity="r", address="https://r/v1", kind="remote", prefill_from=("http://p",)
    )
    assert "X-Prefill-Workers" not in worker_calls.worker_headers(remote, "id")
    local = WorkerSnapshot(id=2, identity="l", address="http://l", prefill_from=("http://p",))
    assert worker_calls.worker_headers(local, "id")["X-Prefill-Workers"] == "http://p"
