"""Requests for a model with no online worker wait when workers are coming; the portal records the demand.

Gateway logic with a fake upstream (the live tests in tests/fleet/test_elastic_live.py use real
processes): a cold deployment's request waits until a worker registers, or gets 503 with Retry-After
past the cold-start timeout; a model whose workers vanished a moment ago waits for them to come back;
a model nobody deploys is refused at once, as before.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx2
import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from fleet.models import Deployment, ModelDemand
from portal.gateway import demand, queue, relay
from portal.gateway.errors import GatewayError
from portal.gateway.gateway import current
from registry.models import Worker, WorkerIntent, WorkerStatus
from registry.services.cache import forget_all
from tests.gateway.conftest import add_worker, chat_result

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}
pytestmark = pytest.mark.django_db(transaction=True)


def caller(key_id: int = 1) -> relay.Caller:
    return relay.Caller(api_key_id=key_id)


def cold_deployment(timeout: int) -> Deployment:
    return Deployment.objects.create(
        name="tiny", model_path="canned", backend="canned", replicas=0, min_replicas=0, max_replicas=2,
        cold_start_timeout=timeout,
    )  # fmt: skip


async def demand_row(**expected: object) -> ModelDemand:
    """The portal's row for `tiny` once it shows `expected` (it writes at most once a second)."""
    row = None
    for _ in range(60):
        row = await ModelDemand.objects.filter(model="tiny").afirst()
        if row is not None and all(getattr(row, k) == v for k, v in expected.items()):
            return row
        await asyncio.sleep(0.1)
    raise AssertionError(f"no demand row with {expected}: {row and row.__dict__}")


async def test_a_request_for_a_cold_model_waits_until_its_worker_registers(served_model, upstream):
    await sync_to_async(cold_deployment)(timeout=30)
    upstream(lambda request: httpx2.Response(200, json=chat_result()))
    waiting = asyncio.create_task(relay.chat_completion(dict(BODY), caller=caller(), request_id="cold-1"))
    row = await demand_row(waiting=1, in_flight=1)
    assert row.waiting_since is not None
    assert row.last_request_at is not None
    assert not waiting.done()  # no 503 while the replica starts
    await sync_to_async(add_worker)(served_model, "w1")  # the agent's replica comes online
    result = await asyncio.wait_for(waiting, 10)
    assert result["choices"][0]["message"]["content"] == "hi"
    await demand_row(waiting=0, in_flight=0)  # the end is written too
    assert current().queues.waiting_here(served_model.id) == 0


async def test_past_the_cold_start_timeout_it_answers_503_with_retry_after(served_model, upstream):
    await sync_to_async(cold_deployment)(timeout=1)
    upstream(lambda request: httpx2.Response(200, json=chat_result()))
    started = asyncio.get_running_loop().time()
    with pytest.raises(GatewayError) as info:
        await relay.chat_completion(dict(BODY), caller=caller())
    assert info.value.status_code == 503
    assert info.value.retry_after == queue.QUEUE_TIMEOUT_RETRY_AFTER
    assert "No worker of 'tiny' came online within 1 s" in info.value.message  # not the queue's 30 s
    assert 1 <= asyncio.get_running_loop().time() - started < 3


async def test_a_queue_that_refuses_at_once_still_waits_for_a_cold_start(served_model, upstream):
    served_model.queue_timeout = 0
    await sync_to_async(served_model.save)()
    await sync_to_async(cold_deployment)(timeout=1)
    upstream(lambda request: httpx2.Response(200, json=chat_result()))
    started = asyncio.get_running_loop().time()
    with pytest.raises(GatewayError) as info:
        await relay.chat_completion(dict(BODY), caller=caller())
    waited = asyncio.get_running_loop().time() - started
    assert "within 1 s" in info.value.message
    assert 1 <= waited < 3


async def test_a_model_nobody_deploys_and_nobody_served_is_refused_at_once(served_model, upstream):
    upstream(lambda request: httpx2.Response(200, json=chat_result()))
    started = asyncio.get_running_loop().time()
    with pytest.raises(GatewayError) as info:
        await relay.chat_completion(dict(BODY), caller=caller())
    assert info.value.code == "no_worker_available"
    assert asyncio.get_running_loop().time() - started < 0.5


async def test_a_request_waits_for_workers_that_vanished_a_moment_ago(served_model, upstream):
    upstream(lambda request: httpx2.Response(200, json=chat_result()))
    worker = await sync_to_async(add_worker)(served_model, "w1")
    await relay.chat_completion(dict(BODY), caller=caller())
    # Its heartbeat expired (a database outage) a moment ago: the list of workers is empty for a while.
    gone = timezone.now() - timedelta(seconds=20)
    await Worker.objects.filter(pk=worker.pk).aupdate(status=WorkerStatus.OFFLINE, last_heartbeat=gone)
    forget_all()
    waiting = asyncio.create_task(relay.chat_completion(dict(BODY), caller=caller()))
    await asyncio.sleep(1.0)
    assert not waiting.done()  # no 503 no_worker_available
    await Worker.objects.filter(pk=worker.pk).aupdate(status=WorkerStatus.ONLINE)  # re-registered
    result = await asyncio.wait_for(waiting, 10)
    assert result["choices"][0]["message"]["content"] == "hi"


async def test_workers_silent_for_over_a_minute_or_drained_by_an_operator_are_not_waited_for(
    served_model, upstream, gateway
):
    worker = await sync_to_async(add_worker)(served_model, "w1")
    long_ago = timezone.now() - timedelta(seconds=demand.REREGISTER_WINDOW + 5)
    await Worker.objects.filter(pk=worker.pk).aupdate(status=WorkerStatus.OFFLINE, last_heartbeat=long_ago)
    for _ in range(2):
        with pytest.raises(GatewayError) as info:
            await relay.chat_completion(dict(BODY), caller=caller())
        assert info.value.code == "no_worker_available"
        gateway.demand = demand.Demand()  # what it learnt of the workers is cached
        await Worker.objects.filter(pk=worker.pk).aupdate(
            last_heartbeat=timezone.now(), intent=WorkerIntent.REMOVE
        )
