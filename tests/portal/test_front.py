"""The front door at `/`: models online with their tasks, the links a visitor and staff get, the icon."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from registry.models import ModelTask, ServedModel, Worker, WorkerStatus
from registry.services.workers import WorkerRegistration, register_worker

pytestmark = pytest.mark.django_db


def online(name: str, index: int) -> None:
    register_worker(
        registration=WorkerRegistration(
            identity=f"w{index}", address=f"http://127.0.0.1:{9000 + index}", model_names=(name,)
        )
    )


def test_the_front_door_lists_only_models_online_and_a_snippet_for_the_first_chat_model() -> None:
    online("minilm", 1)
    ServedModel.objects.filter(name="minilm").update(task=ModelTask.EMBED)
    online("smol", 2)
    online("gone", 3)
    Worker.objects.filter(identity="w3").update(status=WorkerStatus.OFFLINE)
    ServedModel.objects.create(name="never-served")
    page = Client().get("/")
    assert page.status_code == 200
    names = [m.name for m in page.context["models"]]
    assert names == ["minilm", "smol"]
    text = page.content.decode()
    assert "Embeddings" in text
    assert 'base_url="http://testserver/v1"' in text
    assert 'model="smol"' in text
    assert 'id="go-console"' not in text


def test_staff_get_the_console_link_and_a_deploy_link_when_nothing_is_online() -> None:
    staff = get_user_model().objects.create_user("op", password="pw-123456789", is_staff=True)
    client = Client()
    client.force_login(staff)
    text = client.get("/").content.decode()
    assert 'id="go-console"' in text
    assert "/admin/fleet/deployment/add/" in text


def test_the_favicon_is_served_and_the_admin_is_branded() -> None:
    icon = Client().get("/favicon.ico")
    assert icon.status_code == 200
    assert icon["Content-Type"] == "image/svg+xml"
    assert icon.content.startswith(b"<svg")
    login = Client().get("/admin/login/").content.decode()
    assert "Model portal" in login
    assert "Django administration" not in login
