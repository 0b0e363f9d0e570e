"""Worker registration, heartbeats, expiry, what dispatch reads of them, schedules and the admin pages."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from django_q.models import Schedule

from registry.models import DispatchPolicy, ModelTask, ServedModel, Worker, WorkerStatus
from registry.services.dispatch import get_model, list_candidates, list_online_models
from registry.services.workers import (
    WorkerRegistration,
    expire_stale_workers,
    mark_draining,
    mark_offline,
    record_heartbeat,
    register_worker,
)
from registry.tasks import ensure_schedules

pytestmark = pytest.mark.django_db


def registration(**overrides: object) -> WorkerRegistration:
    values: dict = {
        "identity": "host@http://127.0.0.1:9001",
        "address": "http://127.0.0.1:9001",
        "model_names": ("smol",),
        "backend": "transformers",
        "device": "cpu",
        "heartbeat_interval": 2.0,
        "max_concurrency": 4,
    }
    values.update(overrides)
    return WorkerRegistration(**values)


def test_register_creates_an_online_row_and_missing_served_models() -> None:
    worker = register_worker(registration=registration(model_names=("mini",), task=ModelTask.EMBED))
    assert worker.status == WorkerStatus.ONLINE
    assert worker.effective_status == WorkerStatus.ONLINE
    assert ServedModel.objects.get(name="mini").task == ModelTask.EMBED
    assert worker.expires_at is not None
    assert worker.last_heartbeat is not None
    assert worker.expires_at - worker.last_heartbeat == timedelta(seconds=6)  # 3 intervals of 2 s


def test_registering_again_keeps_the_row_and_replaces_models() -> None:
    first = register_worker(registration=registration())
    mark_offline(identity=first.identity)
    again = register_worker(registration=registration(model_names=("other",)))
    assert again.pk == first.pk
    assert again.status == WorkerStatus.ONLINE
    assert list(again.served_models.values_list("name", flat=True)) == ["other"]


def test_heartbeat_stores_figures_and_extends_expiry() -> None:
    worker = register_worker(registration=registration())
    Worker.objects.filter(pk=worker.pk).update(expires_at=timezone.now() + timedelta(seconds=1))
    assert record_heartbeat(
        identity=worker.identity,
        in_flight=2,
        queued=1,
        tokens_per_second=40.0,
        prefix_cache_hit_rate=0.75,
        prefix_cache_tokens=4096,
        interval=2.0,
    )
    worker.refresh_from_db()
    assert (worker.in_flight, worker.queued, worker.tokens_per_second, worker.speed) == (2, 1, 40.0, 40.0)
    assert (worker.prefix_cache_hit_rate, worker.prefix_cache_tokens) == (0.75, 4096)
    assert worker.expires_at is not None
    assert worker.expires_at > timezone.now() + timedelta(seconds=5)


def test_heartbeat_of_an_offline_or_unknown_worker_reports_false() -> None:
    worker = register_worker(registration=registration())
    mark_offline(identity=worker.identity)
    assert not record_heartbeat(identity=worker.identity, in_flight=0, queued=0, tokens_per_second=0.0)
    assert not record_heartbeat(identity="nobody", in_flight=0, queued=0, tokens_per_second=0.0)


def test_draining_worker_is_not_online_and_offline_resets_load() -> None:
    worker = register_worker(registration=registration())
    record_heartbeat(identity=worker.identity, in_flight=3, queued=2, tokens_per_second=1.0)
    mark_draining(identity=worker.identity)
    assert list_candidates(served_model_id=ServedModel.objects.get(name="smol").id) == []
    mark_offline(identity=worker.identity)
    worker.refresh_from_db()
    assert (worker.status, worker.in_flight, worker.queued) == (WorkerStatus.OFFLINE, 0, 0)


def test_expired_workers_leave_online_at_once_and_the_sweep_marks_them_offline() -> None:
    live = register_worker(registration=registration(identity="live", address="http://127.0.0.1:1"))
    stale = register_worker(registration=registration(identity="stale", address="http://127.0.0.1:2"))
    Worker.objects.filter(pk=stale.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    smol = ServedModel.objects.get(name="smol")
    assert [w.identity for w in list_candidates(served_model_id=smol.id)] == ["live"]
    assert expire_stale_workers() == 1
    assert Worker.objects.get(pk=stale.pk).status == WorkerStatus.OFFLINE
    assert Worker.objects.get(pk=live.pk).status == WorkerStatus.ONLINE
    assert expire_stale_workers() == 0


def test_disabled_models_do_not_resolve_and_only_live_ones_are_listed() -> None:
    register_worker(registration=registration(model_names=("smol", "off")))
    ServedModel.objects.filter(name="off").update(enabled=False)
    ServedModel.objects.create(name="orphan")
    assert get_model(name="off") is None
    assert [m["name"] for m in list_online_models()] == ["smol"]


def test_setup_schedules_creates_the_expiry_schedule_once() -> None:
    call_command("setup_schedules")
    ensure_schedules()
    schedule = Schedule.objects.get(func="registry.tasks.expire_stale_workers")
    assert schedule.schedule_type == Schedule.MINUTES
    assert Schedule.objects.filter(func="registry.tasks.expire_stale_workers").count() == 1


def test_admin_lists_workers_with_effective_status_and_models(django_assert_max_num_queries: object) -> None:
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(user)
    for i in range(3):
        register_worker(registration=registration(identity=f"w{i}", address=f"http://127.0.0.1:{9000 + i}"))
    Worker.objects.filter(identity="w0").update(expires_at=timezone.now() - timedelta(seconds=1))
    record_heartbeat(identity="w2", in_flight=2, queued=0, tokens_per_second=40.0, kv_cache_usage=0.375)
    response = client.get("/admin/registry/worker/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "w1" in html
    assert "smol" in html
    assert "38%" in html  # w2's KV cache in use; the others report none
    model_admin: Any = admin.site._registry[Worker]
    statuses = {w.identity: model_admin.live_status(w) for w in response.context["cl"].result_list}
    assert statuses == {"w0": "offline", "w1": "online", "w2": "online"}
    with django_assert_max_num_queries(12):  # type: ignore[operator]
        client.get("/admin/registry/worker/")
    assert client.get("/admin/registry/servedmodel/").status_code == 200
    assert (
        client.get(f"/admin/registry/worker/{Worker.objects.get(identity='w1').pk}/change/").status_code
        == 200
    )


@pytest.mark.django_db
def test_admin_never_shows_a_remote_endpoints_key_and_keeps_it_when_left_blank(admin_client):
    worker = Worker.objects.create(
        identity="remote-a", kind="remote", address="https://api.example.test/v1", remote_api_key="rk-secret"
    )
    page = admin_client.get(f"/admin/registry/worker/{worker.pk}/change/")
    assert page.status_code == 200
    assert b"rk-secret" not in page.content
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update(
        identity="remote-a",
        kind="remote",
        address="https://api.example.test/v1",
        status="online",
        role="both",
        remote_api_key="",
    )
    data["served_models"] = []
    saved = admin_client.post(f"/admin/registry/worker/{worker.pk}/change/", data)
    assert saved.status_code == 302, saved.context["adminform"].form.errors if saved.context else saved
    worker.refresh_from_db()
    assert worker.remote_api_key == "rk-secret"


def test_a_generating_workers_new_model_is_dispatched_cache_aware_an_encoders_by_load() -> None:
    register_worker(registration=registration(model_names=("chat",)))
    register_worker(registration=registration(identity="e", model_names=("vectors",), task=ModelTask.EMBED))
    policies = dict(ServedModel.objects.values_list("name", "dispatch_policy"))
    assert policies == {"chat": DispatchPolicy.CACHE_AWARE, "vectors": DispatchPolicy.LEAST_INFLIGHT}
