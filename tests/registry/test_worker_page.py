"""A worker's admin page: by section, memory in readable units, drain and resume as buttons."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from registry.admin_workers import readable_bytes
from registry.models import Worker, WorkerIntent
from registry.services.workers import WorkerRegistration, register_worker

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", password="pw-123456789"))
    return client


def test_memory_reads_in_mib_or_gib() -> None:
    assert readable_bytes(None) == "—"
    assert readable_bytes(512 * 2**20) == "512 MiB"
    assert readable_bytes(3 * 2**29) == "1.5 GiB"


def test_a_local_workers_page_leads_with_what_it_serves_and_drains_from_a_button(staff) -> None:
    worker = register_worker(
        registration=WorkerRegistration(
            identity="w1", address="http://127.0.0.1:9401", model_names=("smol",), backend="llamacpp"
        )
    )
    Worker.objects.filter(pk=worker.pk).update(memory_bytes=3 * 2**29)
    page = staff.get(f"/admin/registry/worker/{worker.pk}/change/").content.decode()
    headings = re.findall(r"<h2[^>]*>([^<]+)</h2>", page)
    assert [h for h in headings if h in ("Serving", "Now", "Capacity", "Process")] == [
        "Serving", "Now", "Capacity", "Process",
    ]  # fmt: skip
    assert page.index("http://127.0.0.1:9401") < page.index("1.5 GiB")
    assert "Remote api key" not in page
    assert 'id="worker-drain"' in page
    drained = staff.post(
        "/admin/registry/worker/",
        {"action": "drain", "index": 0, "_selected_action": worker.pk},
        follow=True,
    )
    assert drained.status_code == 200
    assert Worker.objects.get(pk=worker.pk).intent == WorkerIntent.DRAIN


def test_adding_a_remote_endpoint_keeps_the_plain_form(staff) -> None:
    page = staff.get("/admin/registry/worker/add/").content.decode()
    assert 'name="remote_api_key"' in page
    assert 'id="worker-drain"' not in page
