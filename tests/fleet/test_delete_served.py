"""Deleting a deployment: the admin asks what becomes of its served model, and its requests get a 404."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command
from django.test import AsyncClient

from audit.models import AuditEntry
from fleet.models import Deployment
from fleet.services import deployments, served
from portal.console.fleet import fleet_snapshot
from registry.models import ModelAlias, ServedModel
from registry.services import keys
from registry.services.cache import forget_all
from tests.fleet.conftest import ADD, FORM
from tests.gateway.conftest import add_worker

pytestmark = pytest.mark.django_db(transaction=True)  # the registry version is bumped on commit
DELETE = "/admin/fleet/deployment/{}/delete/"


def deploy(name: str, **fields: object) -> Deployment:
    deployment = deployments.create_deployment(name=name, model_path="canned", backend="canned", **fields)
    ServedModel.objects.get_or_create(name=name)  # as the scheduler names it
    return deployment


def test_the_confirmation_asks_and_disables_the_served_model_by_default(staff, node):
    deployment = deploy("echo")
    ModelAlias.objects.create(name="echo-alias", served_model=ServedModel.objects.get(name="echo"))
    page = staff.get(DELETE.format(deployment.pk)).content.decode()
    assert 'name="served_models" value="disable" checked' in page
    assert 'value="remove"' in page
    assert "Its served model: echo" in page
    done = staff.post(DELETE.format(deployment.pk), {"post": "yes"}, follow=True)
    assert not Deployment.objects.exists()
    assert list(ServedModel.objects.values_list("name", "enabled")) == [("echo", False)]
    assert ModelAlias.objects.filter(name="echo-alias").exists()  # kept for a later deployment
    said = [str(m) for m in done.context["messages"]]
    assert "Served model(s) “echo” disabled: their requests get 404 model_not_found." in said
    assert [m["name"] for m in fleet_snapshot()["models"]] == []  # not a live model with 0 replicas
    audited = AuditEntry.objects.filter(object_type="registry.servedmodel", object_repr="echo")
    assert list(audited.values_list("actor_name", "after")) == [("root", {"enabled": False})]


def test_a_name_an_online_worker_still_serves_is_not_left_behind(node):
    kept, gone = deploy("kept"), deploy("gone")
    add_worker(ServedModel.objects.get(name="kept"), "w-kept")  # started by hand, outside the fleet
    assert served.names_left_behind([kept, gone]) == ["gone"]


def test_remove_deletes_the_served_model_and_a_shared_name_is_left_alone(staff, node):
    doomed = deploy("echo", model_names="echo,shared")
    deploy("other", model_names="shared")
    ServedModel.objects.get_or_create(name="shared")
    page = staff.get(DELETE.format(doomed.pk)).content.decode()
    assert "Its served model: echo" in page  # "shared" is still another deployment's
    staff.post(DELETE.format(doomed.pk), {"post": "yes", "served_models": "remove"})
    assert sorted(ServedModel.objects.values_list("name", "enabled")) == [("other", True), ("shared", True)]


def test_bulk_delete_asks_too_and_refuses_an_unknown_choice(staff, node):
    one, two = deploy("one"), deploy("two")
    selected = {"action": "delete_selected", "_selected_action": [one.pk, two.pk]}
    confirm = staff.post("/admin/fleet/deployment/", selected).content.decode()
    assert "Its served models: one, two" in confirm
    refused = staff.post("/admin/fleet/deployment/", {**selected, "post": "yes", "served_models": "keep"})
    assert refused.status_code == 400
    assert Deployment.objects.count() == 2
    staff.post("/admin/fleet/deployment/", {**selected, "post": "yes", "served_models": "remove"})
    assert not Deployment.objects.exists()
    assert not ServedModel.objects.exists()


def test_deploying_the_name_again_enables_it(staff, node):
    served.delete_deployments([deploy("echo")], fate=served.ServedFate.DISABLE)
    response = staff.post(ADD, {**FORM, "name": "echo", "model_path": "canned", "extra_args": ""})
    assert response.status_code == 302
    assert ServedModel.objects.get(name="echo").enabled


async def test_a_deleted_deployments_requests_get_404_not_503_retry_later():
    forget_all()
    await sync_to_async(deploy)("gone", cold_start_timeout=1)  # its replica never comes: 503 after 1 s
    _, secret = await sync_to_async(keys.create_api_key)(name="t")
    body = json.dumps({"model": "gone", "messages": [{"role": "user", "content": "hi"}]})

    async def ask() -> tuple[int, str]:
        forget_all()  # what the registry version's bump does on every portal
        response = await AsyncClient().post(
            "/v1/chat/completions", data=body, content_type="application/json",
            headers={"Authorization": f"Bearer {secret}"},
        )  # fmt: skip
        return response.status_code, json.loads(response.content)["error"]["code"]

    await ServedModel.objects.filter(name="gone").aupdate(queue_timeout=0)
    assert (await ask())[0] == 503  # a deployment with no replica yet: retry later
    doomed = await Deployment.objects.aget(name="gone")
    await sync_to_async(served.delete_deployments)([doomed], fate=served.ServedFate.DISABLE)
    assert await ask() == (404, "model_not_found")
    forget_all()


def test_the_deploy_command_deletes_and_disables_or_removes_too(node):
    deploy("echo", replicas=0)
    deploy("other", replicas=0)  # stopped: the command deletes at once
    out = StringIO()
    call_command("deploy", "delete", "echo", stdout=out)
    assert out.getvalue().strip() == "echo: deleted; served model(s) echo disabled"
    call_command("deploy", "delete", "other", "--served-models", "remove", stdout=out)
    assert out.getvalue().strip().endswith("other: deleted; served model(s) other removed")
    assert list(ServedModel.objects.values_list("name", "enabled")) == [("echo", False)]
