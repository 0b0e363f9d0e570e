"""The operator's controls: drain, resume and remove workers, enable models, and the registry version."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from registry.models import ServedModel, Worker, WorkerIntent, WorkerKind, WorkerStatus
from registry.services import controls, versions
from registry.services.workers import (
    WorkerRegistration,
    mark_drained,
    mark_offline,
    record_heartbeat,
    register_worker,
)

pytestmark = pytest.mark.django_db(transaction=True)  # the version bump runs on commit


def register(identity: str = "host@http://127.0.0.1:9001") -> Worker:
    return register_worker(
        registration=WorkerRegistration(
            identity=identity, address="http://127.0.0.1:9001", model_names=("smol",), heartbeat_interval=2.0
        )
    )


def beat(worker: Worker) -> str | None:
    return record_heartbeat(identity=worker.identity, in_flight=1, queued=0, tokens_per_second=5.0)


def test_a_drained_worker_leaves_dispatch_at_once_and_reads_its_intent_with_the_next_beat() -> None:
    worker = register()
    assert beat(worker) == WorkerIntent.SERVE
    assert controls.drain_workers(worker_ids=[worker.id]) == 1
    worker.refresh_from_db()
    assert (worker.status, worker.intent) == (WorkerStatus.DRAINING, WorkerIntent.DRAIN)
    assert not Worker.objects.online().exists()
    assert beat(worker) == WorkerIntent.DRAIN


def test_a_drained_worker_goes_offline_keeps_beating_and_comes_back_when_resumed() -> None:
    worker = register()
    controls.drain_workers(worker_ids=[worker.id])
    mark_drained(identity=worker.identity)
    worker.refresh_from_db()
    assert worker.status == WorkerStatus.OFFLINE
    assert beat(worker) == WorkerIntent.DRAIN  # offline on purpose, still alive
    controls.resume_workers(worker_ids=[worker.id])
    assert beat(worker) is None  # the worker registers again
    again = register()
    assert (again.pk, again.status, again.intent) == (worker.pk, WorkerStatus.ONLINE, WorkerIntent.SERVE)


def test_a_drain_outlives_a_restart_of_the_worker() -> None:
    worker = register()
    controls.drain_workers(worker_ids=[worker.id])
    mark_offline(identity=worker.identity)
    again = register()
    assert (again.status, again.intent) == (WorkerStatus.DRAINING, WorkerIntent.DRAIN)


def test_remove_deletes_gone_workers_and_asks_running_ones_to_exit() -> None:
    running = register("running")
    gone = register("gone")
    Worker.objects.filter(pk=gone.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    remote = Worker.objects.create(identity="remote", kind=WorkerKind.REMOTE, address="http://127.0.0.1:1")
    assert controls.remove_workers(worker_ids=[running.id, gone.id, remote.id]) == (2, 1)
    assert list(Worker.objects.values_list("identity", "intent")) == [("running", WorkerIntent.REMOVE)]
    assert beat(running) == WorkerIntent.REMOVE
    mark_offline(identity=running.identity)  # what the worker does on its way out
    assert not Worker.objects.exists()


def test_a_drained_remote_endpoint_is_offline_and_no_longer_probed() -> None:
    from registry.services.remote import probe_remote_endpoints

    remote = Worker.objects.create(
        identity="remote", kind=WorkerKind.REMOTE, address="http://127.0.0.1:9", status=WorkerStatus.ONLINE
    )
    controls.drain_workers(worker_ids=[remote.id])
    assert probe_remote_endpoints() == 0
    remote.refresh_from_db()
    assert (remote.status, remote.last_error) == (WorkerStatus.OFFLINE, "")
    controls.resume_workers(worker_ids=[remote.id])
    remote.refresh_from_db()
    assert (remote.status, remote.intent) == (WorkerStatus.ONLINE, WorkerIntent.SERVE)


def test_admin_changes_bump_the_registry_version() -> None:
    start = versions.read_version()
    model = ServedModel.objects.create(name="smol")
    assert versions.read_version() == start + 1
    controls.set_models_enabled(model_ids=[model.id], enabled=False)
    assert versions.read_version() == start + 2
    worker = register()
    Worker.objects.filter(pk=worker.pk).update(in_flight=3)  # figures do not bump it
    assert versions.read_version() == start + 2
    controls.drain_workers(worker_ids=[worker.id])
    assert versions.read_version() == start + 3


async def test_a_portal_forgets_its_cached_lookups_when_another_bumped_the_version(monkeypatch) -> None:
    forgotten: list[bool] = []
    monkeypatch.setattr(versions, "forget_cached_lookups", lambda: forgotten.append(True))
    watch = versions.VersionWatch()
    await watch.check()  # first look: remembers the version
    monkeypatch.setattr(versions, "CHECK_SECONDS", 0.0)
    await watch.check()
    assert forgotten == []
    versions.cache.set(versions.VERSION_KEY, versions.read_version() + 1)  # another portal's bump
    await watch.check()
    assert forgotten == [True]


def staff_client() -> Client:
    user = get_user_model().objects.create_superuser("root", password="pw-123456789")
    client = Client()
    client.force_login(user)
    return client


def test_the_admin_actions_drain_resume_and_remove_workers() -> None:
    worker = register()
    client = staff_client()
    url = "/admin/registry/worker/"
    response = client.post(url, {"action": "drain", "_selected_action": [worker.id]}, follow=True)
    assert "1 worker(s) draining" in response.content.decode()
    worker.refresh_from_db()
    assert worker.intent == WorkerIntent.DRAIN
    assert "draining (drain)" in client.get(url).content.decode()
    client.post(url, {"action": "resume", "_selected_action": [worker.id]})
    worker.refresh_from_db()
    assert worker.intent == WorkerIntent.SERVE
    client.post(url, {"action": "remove", "_selected_action": [worker.id]})
    worker.refresh_from_db()
    assert worker.intent == WorkerIntent.REMOVE


def test_the_admin_actions_enable_and_disable_models() -> None:
    model = ServedModel.objects.create(name="smol")
    client = staff_client()
    url = "/admin/registry/servedmodel/"
    client.post(url, {"action": "disable_models", "_selected_action": [model.id]})
    model.refresh_from_db()
    assert not model.enabled
    client.post(url, {"action": "enable_models", "_selected_action": [model.id]})
    model.refresh_from_db()
    assert model.enabled
