"""The fleet dashboard: staff only, figures right, bounded queries, live updates over a websocket."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser, Permission
from django.test import Client
from django.utils import timezone

from fleet.models import Deployment, DeploymentEvent, Instance, Node, ScaleAction
from fleet.selectors import EVENTS_SHOWN, list_recent_events
from fleet.services.autoscaler import record
from portal.console import live
from portal.console.fleet import fleet_snapshot, percentile
from registry.models import ServedModel, UsageRecord, UsageStatus, Worker, WorkerStatus
from registry.services.workers import WorkerRegistration, record_heartbeat, register_worker

URL = "/admin/console/"


def add_worker(index: int, model: str = "smol") -> Worker:
    return register_worker(
        registration=WorkerRegistration(
            identity=f"w{index}", address=f"http://127.0.0.1:{9000 + index}", model_names=(model,)
        )
    )


def usage(
    model: str, ttft: float, total: float, status: str = UsageStatus.OK, age_s: float = 10
) -> UsageRecord:
    return UsageRecord.objects.create(
        request_id=f"r{ttft}-{total}-{status}-{age_s}",
        model_name=model,
        endpoint="chat",
        time_to_first_token_ms=ttft,
        total_time_ms=total,
        status=status,
        status_code=200 if status == UsageStatus.OK else 502,
        created_at=timezone.now() - timedelta(seconds=age_s),
    )


def client_for(*, staff: bool) -> Client:
    user = get_user_model().objects.create_user("someone", password="pw-123456789", is_staff=staff)
    user.user_permissions.add(Permission.objects.get(codename="view_worker"))  # the console's (every role's)
    client = Client()
    client.force_login(user)
    return client


def test_percentile_is_the_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 0.5) == 3.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0


@pytest.mark.django_db
def test_the_snapshot_has_each_models_last_five_minutes() -> None:
    add_worker(1)
    add_worker(2)
    Worker.objects.filter(identity="w2").update(status=WorkerStatus.OFFLINE)
    ServedModel.objects.create(name="idle")
    for ttft in (100.0, 200.0, 300.0, 400.0):
        usage("smol", ttft, ttft * 10)
    usage("smol", 50.0, 60.0, status=UsageStatus.ERROR)
    usage("smol", 9999.0, 9999.0, age_s=400)  # outside the window
    models = {m["name"]: m for m in fleet_snapshot()["models"]}
    smol = models["smol"]
    assert smol["online_replicas"] == 1
    assert smol["requests_per_minute"] == 1.0  # 5 requests in 5 minutes
    assert (smol["ttft_p50_ms"], smol["ttft_p95_ms"]) == (200.0, 400.0)
    assert smol["latency_p95_ms"] == 4000.0
    assert smol["error_rate"] == 0.2
    assert models["idle"]["requests_per_minute"] == 0
    assert models["idle"]["ttft_p50_ms"] is None


@pytest.mark.django_db
def test_prefix_cache_hits_are_shown_per_model_and_per_worker() -> None:
    worker = add_worker(1)
    record_heartbeat(
        identity=worker.identity, in_flight=0, queued=0, tokens_per_second=0.0, prefix_cache_hit_rate=0.5
    )
    for at, (prompt, cached) in enumerate([(1000, 960), (1000, 0), (500, 240)]):
        record = usage("smol", 100.0 + at, 200.0)
        UsageRecord.objects.filter(pk=record.pk).update(prompt_tokens=prompt, cached_tokens=cached)
    snapshot = fleet_snapshot()
    assert {m["name"]: m["prefix_cache_hit_rate"] for m in snapshot["models"]} == {"smol": 0.48}
    assert [w["prefix_cache_hit_rate"] for w in snapshot["workers"]] == [0.5]


@pytest.mark.django_db
def test_first_token_and_inter_token_latency_are_shown_per_serving_role() -> None:
    both, decode = add_worker(1), add_worker(2)
    Worker.objects.filter(pk=decode.pk).update(role="decode")
    rows = [
        (both, 100.0, 1100.0, 11, True),
        (decode, 300.0, 800.0, 11, True),
        (both, 500.0, 600.0, 5, False),
    ]  # the last not streamed: no time between tokens
    for index, (worker, first, total, tokens, streamed) in enumerate(rows):
        UsageRecord.objects.create(
            request_id=f"role-{index}",
            model_name="smol",
            endpoint="chat",
            worker=worker,
            time_to_first_token_ms=first,
            total_time_ms=total,
            completion_tokens=tokens,
            streamed=streamed,
        )
    smol = next(m for m in fleet_snapshot()["models"] if m["name"] == "smol")
    assert smol["by_role"]["both"]["ttft_p95_ms"] == 500.0
    assert smol["by_role"]["both"]["itl_p50_ms"] == 100.0
    assert (smol["by_role"]["decode"]["ttft_p50_ms"], smol["by_role"]["decode"]["itl_p50_ms"]) == (
        300.0,
        50.0,
    )
    assert (smol["itl_p50_ms"], smol["itl_p95_ms"]) == (50.0, 100.0)


@pytest.mark.django_db
def test_the_dashboard_is_for_staff_only() -> None:
    assert Client().get(URL).status_code == 302
    assert Client().get(URL + "fleet.json").status_code == 302
    assert client_for(staff=False).get(URL).status_code == 302


@pytest.mark.django_db
@pytest.mark.parametrize("workers", [3, 60])
def test_the_dashboard_renders_in_a_bounded_number_of_queries(workers, django_assert_max_num_queries) -> None:
    node = Node.objects.create(name="n", address="127.0.0.1")
    deployments = [Deployment.objects.create(name=f"d{i}", model_path="canned") for i in range(7)]
    for index in range(workers):
        add_worker(index, model=f"m{index % 7}")
        usage(f"m{index % 7}", 100.0 + index, 1000.0)
        Instance.objects.create(deployment=deployments[index % 7], node=node, generation=1)
        record(deployments[index % 7], ScaleAction.UP, 2, "a burst", timezone.now())
    staff = client_for(staff=True)
    with django_assert_max_num_queries(14):  # one more: the user's team (whose usage they may see)
        page = staff.get(URL)
    assert page.status_code == 200
    assert "fleet-workers" in page.content.decode()
    # the last hour's trends, the console permission (user, groups), the user's team
    with django_assert_max_num_queries(13):
        data = staff.get(URL + "fleet.json").json()
    assert len(data["workers"]) == workers
    assert sum(len(d["instances"]) for d in data["deployments"]) == workers
    first = Instance.objects.filter(deployment=deployments[0]).earliest("pk")
    assert data["deployments"][0]["instances"][0]["identity"] == f"d0/{first.pk}@n"


@pytest.mark.django_db
def test_each_deployment_shows_its_newest_scaling_events_in_one_query(django_assert_num_queries) -> None:
    busy = Deployment.objects.create(name="busy", model_path="canned", min_replicas=1, max_replicas=9)
    calm = Deployment.objects.create(name="calm", model_path="canned", min_replicas=0, max_replicas=1)
    start = timezone.now() - timedelta(minutes=10)
    for step in range(EVENTS_SHOWN + 2):
        record(busy, ScaleAction.UP, step + 2, f"step {step}", start + timedelta(seconds=step))
        busy.replicas = step + 2
    record(calm, ScaleAction.EVICTED, 0, "evicted for busy (1 request(s) waiting); idle 12 s", start)
    with django_assert_num_queries(1):
        events = list_recent_events()
    newest = [e["reason"] for e in events[str(busy.id)]]
    assert newest == [f"step {step}" for step in range(EVENTS_SHOWN + 1, 1, -1)]
    assert events[str(busy.id)][0]["replicas_before"] == EVENTS_SHOWN + 2
    assert events[str(busy.id)][0]["replicas_after"] == EVENTS_SHOWN + 3
    (evicted,) = events[str(calm.id)]
    assert (evicted["action"], evicted["replicas_after"]) == ("evicted", 0)
    assert fleet_snapshot()["deployment_events"] == events
    page = client_for(staff=True).get(URL).content.decode()
    assert 'id="fleet-events"' in page
    assert "evicted for busy (1 request(s) waiting); idle 12 s" in page  # in the page's first snapshot
    assert DeploymentEvent.objects.count() == EVENTS_SHOWN + 3  # the admin keeps them all


@pytest.mark.django_db(transaction=True)
async def test_a_scaling_decision_pushes_a_snapshot_with_its_event(monkeypatch) -> None:
    monkeypatch.setattr(live, "POLL_SECONDS", 0.1)
    deployment = await Deployment.objects.acreate(
        name="auto", model_path="canned", min_replicas=1, max_replicas=4
    )
    staff = await database_sync_to_async(get_user_model().objects.create_superuser)("boss")
    socket = WebsocketCommunicator(live.FleetConsumer.as_asgi(), "/ws/console/fleet/")
    socket.scope["user"] = staff
    assert (await socket.connect())[0]
    first = await socket.receive_json_from(timeout=5)
    assert first["deployment_events"] == {}
    why = "the queue waited 1.6 s > target 0.5 s for 5 s"
    await database_sync_to_async(record)(deployment, ScaleAction.UP, 4, why, timezone.now())
    update = await socket.receive_json_from(timeout=5)
    (event,) = update["deployment_events"][str(deployment.id)]
    assert (event["action"], event["replicas_before"], event["replicas_after"], event["reason"]) == (
        "up",
        1,
        4,
        why,
    )
    await socket.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_the_websocket_refuses_anyone_but_staff() -> None:
    for user in (AnonymousUser(), await database_sync_to_async(get_user_model().objects.create_user)("u")):
        socket = WebsocketCommunicator(live.FleetConsumer.as_asgi(), "/ws/console/fleet/")
        socket.scope["user"] = user
        connected, code = await socket.connect()
        assert (connected, code) == (False, live.FORBIDDEN_CLOSE_CODE)


@pytest.mark.django_db(transaction=True)
async def test_the_websocket_sends_an_update_when_a_heartbeat_arrives(monkeypatch) -> None:
    monkeypatch.setattr(live, "POLL_SECONDS", 0.1)
    worker = await database_sync_to_async(add_worker)(1)
    staff = await database_sync_to_async(get_user_model().objects.create_superuser)("boss")
    snapshot = live.fleet_snapshot

    def heartbeat_just_after_the_first_snapshot(scope):
        """A heartbeat lands the moment the client's first snapshot is read: it must still be told."""
        first = snapshot(scope)
        if worker.identity not in landed:
            landed.append(worker.identity)
            record_heartbeat(identity=worker.identity, in_flight=3, queued=1, tokens_per_second=42.0)
        return first

    landed: list[str] = []
    monkeypatch.setattr(live, "fleet_snapshot", heartbeat_just_after_the_first_snapshot)
    socket = WebsocketCommunicator(live.FleetConsumer.as_asgi(), "/ws/console/fleet/")
    socket.scope["user"] = staff
    connected, _ = await socket.connect()
    assert connected
    first = await socket.receive_json_from(timeout=5)
    assert first["type"] == "fleet.snapshot"
    assert first["workers"][0]["in_flight"] == 0
    update = await socket.receive_json_from(timeout=5)
    row = update["workers"][0]
    assert (row["in_flight"], row["queued"], row["tokens_per_second"]) == (3, 1, 42.0)
    await socket.disconnect()
    assert live.watch.clients == 0


@pytest.mark.django_db(transaction=True)
async def test_a_burst_of_changes_sends_at_most_one_snapshot_a_second() -> None:
    staff = await database_sync_to_async(get_user_model().objects.create_superuser)("boss")
    socket = WebsocketCommunicator(live.FleetConsumer.as_asgi(), "/ws/console/fleet/")
    socket.scope["user"] = staff
    assert (await socket.connect())[0]
    await socket.receive_json_from(timeout=5)
    sent_at = asyncio.get_running_loop().time()
    layer = get_channel_layer()
    for _ in range(20):
        await layer.group_send(live.GROUP, {"type": "fleet.changed"})
    await socket.receive_json_from(timeout=5)
    assert asyncio.get_running_loop().time() - sent_at >= 0.9
    assert await socket.receive_nothing(timeout=1.2)
    await socket.disconnect()


@pytest.mark.django_db
def test_the_admin_index_links_to_the_dashboard() -> None:
    page = client_for(staff=True).get("/admin/").content.decode()
    assert f'href="{URL}"' in page
