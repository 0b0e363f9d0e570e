"""Remote endpoints: the probe's outcome, and dispatch to one with its key and its /v1 base."""

from __future__ import annotations

import json

import httpx2
import pytest
from asgiref.sync import sync_to_async

from portal.gateway import relay
from registry.models import ServedModel, Worker, WorkerKind, WorkerStatus
from registry.services.remote import probe_remote_endpoint
from tests.gateway.conftest import chat_result

pytestmark = pytest.mark.django_db(transaction=True)


def remote(model: ServedModel) -> Worker:
    worker = Worker.objects.create(
        identity="remote-1", kind=WorkerKind.REMOTE, address="http://remote.example/v1", remote_api_key="rk-1"
    )
    worker.served_models.add(model)
    return worker


def test_probe_marks_an_answering_endpoint_online_and_a_failing_one_offline(served_model):
    worker = remote(served_model)
    seen: list[httpx2.Request] = []

    def ok(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json={"data": []})

    assert probe_remote_endpoint(worker=worker, client=httpx2.Client(transport=httpx2.MockTransport(ok)))
    worker.refresh_from_db()
    assert worker.effective_status == WorkerStatus.ONLINE
    assert str(seen[0].url) == "http://remote.example/v1/models"
    assert seen[0].headers["Authorization"] == "Bearer rk-1"
    failing = httpx2.Client(transport=httpx2.MockTransport(lambda r: httpx2.Response(401, text="bad key")))
    assert not probe_remote_endpoint(worker=worker, client=failing)
    worker.refresh_from_db()
    assert worker.status == WorkerStatus.OFFLINE
    assert "401" in worker.last_error


async def test_relay_sends_the_served_name_and_the_remote_key(served_model, upstream):
    worker = await sync_to_async(remote)(served_model)
    ok = httpx2.Client(transport=httpx2.MockTransport(lambda r: httpx2.Response(200, json={"data": []})))
    await sync_to_async(probe_remote_endpoint)(worker=worker, client=ok)
    seen = upstream(lambda r: httpx2.Response(200, json=chat_result()))
    body = {"model": "tiny-alias", "messages": [{"role": "user", "content": "hi"}]}
    await relay.chat_completion(body, caller=relay.Caller())
    assert str(seen[0].url) == "http://remote.example/v1/chat/completions"
    assert seen[0].headers["Authorization"] == "Bearer rk-1"
    assert json.loads(seen[0].content)["model"] == "tiny"
