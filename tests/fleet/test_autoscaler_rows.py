"""The autoscaler on real rows (no processes): demand rows in, replicas, placements and events out."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from fleet.models import Deployment, DeploymentEvent, ModelDemand
from fleet.services import deployments
from fleet.services.scheduler import reconcile
from registry.models import ServedModel
from tests.fleet.test_scheduler import GIB, make_ready, online_node, wanted

pytestmark = pytest.mark.django_db


def elastic(name: str, *, memory_gib: int = 4, **fields: object) -> Deployment:
    fields = {"min_replicas": 0, "max_replicas": 3, "backend": "canned", **fields}
    return deployments.create_deployment(
        name=name, model_path="canned", memory_per_replica=memory_gib * GIB, **fields
    )


def demand(
    model: str, *, waiting: int = 0, waited: float = 0.0, in_flight: int = 0, ago: float = 0.0
) -> None:
    now = timezone.now()
    ModelDemand.objects.update_or_create(
        model=model,
        source="portal-test",
        defaults={
            "waiting": waiting,
            "waiting_since": now - timedelta(seconds=waited) if waiting else None,
            "in_flight": in_flight + waiting,
            "last_request_at": now - timedelta(seconds=ago),
            "updated_at": now,
        },
    )


def events(deployment: Deployment) -> list[tuple[str, int, int]]:
    return [(e.action, e.replicas_before, e.replicas_after) for e in deployment.events.order_by("at", "id")]


def test_a_new_elastic_deployment_starts_one_replica_then_idles_to_zero_and_comes_back_on_demand():
    online_node("a")
    deployment = elastic("cold", idle_seconds=30)
    assert deployment.replicas == 1  # its model loads once
    reconcile()
    assert len(wanted(deployment)) == 1
    make_ready(wanted(deployment))
    Deployment.objects.filter(pk=deployment.pk).update(scaled_at=timezone.now() - timedelta(seconds=60))
    demand("cold", ago=31)
    reconcile()
    deployment.refresh_from_db()
    assert (deployment.replicas, wanted(deployment), deployment.cold) == (0, [], True)
    demand("cold", waiting=1)
    reconcile()
    deployment.refresh_from_db()
    assert deployment.replicas == 1
    assert len(wanted(deployment)) == 1
    assert events(deployment) == [("zero", 1, 0), ("cold_start", 0, 1)]
    assert "1 request waiting for a cold model" in deployment.events.first().reason  # type: ignore[union-attr]


def test_stale_demand_of_a_gone_portal_starts_nothing():
    online_node("a")
    deployment = elastic("cold")
    deployments.scale(deployment, 0)
    Deployment.objects.filter(pk=deployment.pk).update(min_replicas=0, max_replicas=3)
    demand("cold", waiting=4)
    ModelDemand.objects.update(updated_at=timezone.now() - timedelta(seconds=60))
    reconcile()
    deployment.refresh_from_db()
    assert deployment.replicas == 0


def test_a_slow_queue_scales_up_after_scale_up_after_seconds():
    online_node("a", memory_gib=64)
    deployment = elastic("busy", min_replicas=1, max_replicas=3, scale_up_after=0, max_concurrency=2)
    reconcile()
    wanted(deployment)[0].__class__.objects.filter(deployment=deployment).update(state="ready")
    demand("busy", waiting=3, waited=5, in_flight=2)
    reconcile()
    deployment.refresh_from_db()
    assert deployment.replicas == 3
    assert len(wanted(deployment)) == 3
    (event,) = deployment.events.all()
    assert event.action == "up"
    assert "the queue waited" in event.reason


def test_a_waiting_model_evicts_the_idle_one_never_the_serving_one():
    online_node("a", memory_gib=10)  # 9 GiB usable: two 4 GiB replicas
    idle = elastic("idle")
    serving = elastic("serving")
    waiting = elastic("waiting")
    reconcile()
    assert (len(wanted(idle)), len(wanted(serving)), len(wanted(waiting))) == (1, 1, 0)
    waiting.refresh_from_db()
    assert "no node has 4.0 GiB free" in waiting.pending_reason
    demand("idle", ago=30)
    demand("serving", in_flight=1, ago=30)
    demand("waiting", waiting=2, waited=1)
    Deployment.objects.update(replicas=1)
    reconcile()
    idle.refresh_from_db()
    waiting.refresh_from_db()
    assert (idle.replicas, len(wanted(idle))) == (0, 0)
    assert len(wanted(serving)) == 1
    assert len(wanted(waiting)) == 1
    assert waiting.pending_reason == ""
    (evicted,) = idle.events.all()
    assert evicted.action == "evicted"
    assert "evicted for waiting (2 request(s) waiting)" in evicted.reason
    assert "evicted idle" in waiting.events.get(action="evicted").reason


def test_nothing_is_evicted_for_a_model_nobody_waits_for():
    online_node("a", memory_gib=10)
    three = [elastic("one"), elastic("two"), elastic("three")]
    reconcile()
    assert sorted(len(wanted(d)) for d in three) == [0, 1, 1]
    assert not DeploymentEvent.objects.filter(action="evicted").exists()


def test_deploy_create_sets_autoscaling_and_scale_makes_it_fixed():
    online_node("a")
    out = StringIO()
    call_command(
        "deploy", "create", "elastic", "--model-path", "canned", "--backend", "canned",
        "--min-replicas", "0", "--max-replicas", "3", "--idle-seconds", "600", "--priority", "2", stdout=out,
    )  # fmt: skip
    deployment = Deployment.objects.get(name="elastic")
    assert (deployment.min_replicas, deployment.max_replicas, deployment.idle_seconds) == (0, 3, 600)
    assert (deployment.priority, deployment.replicas, deployment.autoscaled) == (2, 1, True)
    call_command("deploy", "scale", "elastic", "2", stdout=out)
    deployment.refresh_from_db()
    assert (deployment.autoscaled, deployment.replicas) == (False, 2)


def test_min_above_max_is_refused():
    with pytest.raises(Exception, match="cannot exceed"):
        elastic("bad", min_replicas=3, max_replicas=2)


def test_the_admin_shows_cold_deployments_and_each_decision_with_its_reason(admin_client):
    online_node("a")
    deployment = elastic("sleepy")
    deployments.scale(deployment, 0)
    Deployment.objects.filter(pk=deployment.pk).update(min_replicas=0, max_replicas=3)
    DeploymentEvent.objects.create(
        deployment=deployment,
        action="evicted",
        replicas_before=1,
        replicas_after=0,
        reason="evicted for other",
    )
    changelist = admin_client.get("/admin/fleet/deployment/").content.decode()
    assert "0–3, cold: starts on a request" in changelist
    page = admin_client.get(f"/admin/fleet/deployment/{deployment.pk}/change/").content.decode()
    assert "Scaling events (newest first)" in page
    assert "evicted for other" in page


def test_a_pending_elastic_deployment_names_its_models_so_requests_queue_instead_of_404():
    online_node("a", memory_gib=1)
    elastic("roomless", model_names="roomless,roomless-alias")
    reconcile()
    assert set(ServedModel.objects.values_list("name", flat=True)) == {"roomless", "roomless-alias"}
