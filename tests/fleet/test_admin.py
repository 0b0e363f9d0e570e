"""The deployment admin: saving places replicas, options are checked, restart and stop, bounded pages."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from fleet.models import Deployment, Instance, InstanceState, Node

pytestmark = pytest.mark.django_db
ADD = "/admin/fleet/deployment/add/"
FORM = {
    "model_names": "",
    "backend": "canned",
    "role": "both",
    "replicas": "2",
    "max_concurrency": "16",
    "dtype": "auto",
    "threads": "",
    "max_model_len": "",
    "placement": "spread",
    "required_labels": "{}",
    "memory_per_replica": str(2**30),
    "instances-TOTAL_FORMS": "0",
    "instances-INITIAL_FORMS": "0",
    "events-TOTAL_FORMS": "0",
    "events-INITIAL_FORMS": "0",
    "min_replicas": "",
    "max_replicas": "",
    "idle_seconds": "600",
    "target_queue_wait": "1",
    "target_in_flight": "0.8",
    "scale_up_after": "15",
    "cooldown": "60",
    "priority": "0",
    "cold_start_timeout": "120",
}


@pytest.fixture
def staff() -> Client:
    user = get_user_model().objects.create_superuser("root", password="pw-123456789")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def node() -> Node:
    return Node.objects.create(
        name="node-a",
        address="127.0.0.1",
        memory_bytes=16 * 2**30,
        catalogue=[{"path": "/models/qwen.gguf", "bytes": 2**30}],
        expires_at=timezone.now() + timedelta(seconds=30),
    )


def test_adding_a_deployment_places_its_replicas_at_once(staff, node):
    response = staff.post(ADD, {**FORM, "name": "echo", "model_path": "canned", "extra_args": ""})
    assert response.status_code == 302, response.content.decode()[-3000:]
    deployment = Deployment.objects.get(name="echo")
    assert deployment.instances.filter(node=node, wanted=True).count() == 2


def test_the_form_offers_the_nodes_catalogue_and_refuses_bad_extra_options(staff, node):
    page = staff.get(ADD).content.decode()
    assert "<option value='/models/qwen.gguf'>" in page
    response = staff.post(ADD, {**FORM, "name": "bad", "model_path": "canned", "extra_args": "--port 1"})
    assert response.status_code == 200
    assert "--port is set by the deployment" in response.content.decode()
    assert not Deployment.objects.filter(name="bad").exists()


def test_restart_and_stop_actions(staff, node):
    staff.post(ADD, {**FORM, "name": "echo", "model_path": "canned", "extra_args": ""})
    deployment = Deployment.objects.get(name="echo")
    Instance.objects.update(state=InstanceState.READY)
    changelist = "/admin/fleet/deployment/"
    staff.post(changelist, {"action": "restart", "_selected_action": [deployment.pk]})
    deployment.refresh_from_db()
    assert deployment.generation == 2
    assert deployment.instances.filter(generation=2).count() == 1  # one at a time
    staff.post(changelist, {"action": "stop", "_selected_action": [deployment.pk]})
    assert not deployment.instances.filter(wanted=True).exists()


def test_a_deployment_with_replicas_left_cannot_be_deleted(staff, node):
    staff.post(ADD, {**FORM, "name": "echo", "model_path": "canned", "extra_args": ""})
    deployment = Deployment.objects.get(name="echo")
    assert staff.get(f"/admin/fleet/deployment/{deployment.pk}/delete/").status_code == 403


@pytest.mark.parametrize("replicas", [2, 40])
def test_the_change_page_renders_in_a_bounded_number_of_queries(
    staff, node, replicas, django_assert_max_num_queries
):
    deployment = Deployment.objects.create(name="echo", model_path="canned", replicas=replicas)
    Instance.objects.bulk_create(
        [Instance(deployment=deployment, node=node, generation=1, log_tail="boom") for _ in range(replicas)]
    )
    with django_assert_max_num_queries(12):
        page = staff.get(f"/admin/fleet/deployment/{deployment.pk}/change/")
    assert page.status_code == 200
    assert page.content.decode().count("<pre") == replicas
