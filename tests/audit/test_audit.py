"""The audit trail: admin edits, admin actions and management commands, recorded with who, when, what,
before and after; never a secret; an audit page with filters and CSV; entries pruned after their time."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEntry
from audit.services import prune_audit
from fleet.models import Deployment
from registry.models import ApiKey, AppCredential, ServedModel, Worker, WorkerStatus
from registry.services.keys import create_api_key
from teams.models import Team

pytestmark = pytest.mark.django_db
QUIET = {"stdout": io.StringIO(), "stderr": io.StringIO()}


@pytest.fixture
def root() -> Client:
    user = get_user_model().objects.create_superuser("root", password="pw-123456789")
    client = Client()
    client.force_login(user)
    return client


def entries(**filters: Any) -> list[Any]:  # AuditEntry rows; their JSON fields read as Any
    return list(AuditEntry.objects.filter(**filters).order_by("id"))


def everything_stored() -> str:
    return json.dumps([[e.before, e.after, e.object_repr] for e in AuditEntry.objects.all()])


def post_action(client: Client, model: str, action: str, ids: list[int], status: int = 302) -> None:
    url = reverse(f"admin:{model}_changelist")
    response = client.post(url, {"action": action, "_selected_action": [str(i) for i in ids]})
    assert response.status_code == status, response.content[:500]


def test_an_admin_edit_records_who_and_the_fields_before_and_after_but_no_secret(root):
    key, secret = create_api_key(name="ci", tokens_per_minute=100)
    assert entries() == []  # a service call outside the admin is nobody's doing
    url = reverse("admin:registry_apikey_change", args=[key.pk])
    form = {"name": "ci-renamed", "all_models": "on", "tokens_per_minute": "500", "queue_priority": "0"}
    response = root.post(url, form)
    assert response.status_code == 302, response.content[:2000]
    (entry,) = entries(action="change")
    assert (entry.actor_name, entry.source, entry.object_type) == ("root", "admin", "registry.apikey")
    assert entry.actor is not None
    assert entry.object_id == str(key.pk)
    assert entry.before == {"name": "ci", "tokens_per_minute": 100}
    assert entry.after == {"name": "ci-renamed", "tokens_per_minute": 500}
    assert key.hashed_secret not in everything_stored()
    assert secret not in everything_stored()


def test_an_admin_create_marks_the_secret_without_storing_it(root):
    response = root.post(
        reverse("admin:registry_apikey_add"), {"name": "fresh", "all_models": "on", "queue_priority": "0"}
    )
    assert response.status_code == 302
    (entry,) = entries(action="create")
    assert entry.before is None
    assert entry.after is not None
    assert entry.after["name"] == "fresh"
    assert entry.after["hashed_secret"] == "(secret)"
    key = ApiKey.objects.get(name="fresh")
    assert key.hashed_secret not in everything_stored()


def test_a_password_change_is_recorded_as_changed_only(root):
    user = get_user_model().objects.create_user("alice", password="old-password-1")
    url = reverse("admin:auth_user_password_change", args=[user.pk])
    response = root.post(url, {"password1": "new-Password-42", "password2": "new-Password-42"})
    assert response.status_code == 302, response.content[:2000]
    (entry,) = entries(object_type="auth.user")
    assert entry.after == {"password": "(secret) changed"}
    user.refresh_from_db()
    assert user.password not in everything_stored()


def test_admin_actions_record_each_row_they_touched(root):
    model = ServedModel.objects.create(name="m")
    worker = Worker.objects.create(identity="w", address="http://w:1", status=WorkerStatus.ONLINE)
    post_action(root, "registry_worker", "drain", [worker.pk])
    post_action(root, "registry_worker", "resume", [worker.pk])
    post_action(root, "registry_servedmodel", "disable_models", [model.pk])
    post_action(root, "registry_servedmodel", "enable_models", [model.pk])
    post_action(root, "registry_worker", "remove", [worker.pk])
    actions = [(e.action, e.object_repr, e.before, e.after) for e in entries()]
    drain, resume = actions[:2]
    assert drain[:2] == ("drain", str(worker))
    assert (drain[2]["intent"], drain[3]["intent"]) == ("serve", "drain")
    assert (resume[0], resume[3]["intent"]) == ("resume", "serve")
    assert actions[2] == ("disable_models", "m", {"enabled": True}, {"enabled": False})
    assert actions[3] == ("enable_models", "m", {"enabled": False}, {"enabled": True})
    assert actions[4][0] == "remove"
    assert all(e.actor_name == "root" for e in entries())
    post_action(root, "registry_servedmodel", "enable_models", [model.pk])  # enabled already: nothing
    post_action(root, "registry_servedmodel", "delete_selected", [model.pk], 200)  # confirm?
    assert len(entries()) == 5


def test_fleet_actions_and_an_admin_scale_are_recorded(root):
    call_command("deploy", "create", "small", "--model-path=smollm2-135m-instruct", "--replicas=1", **QUIET)
    deployment = Deployment.objects.get(name="small")
    AuditEntry.objects.all().delete()
    post_action(root, "fleet_deployment", "restart", [deployment.pk])
    post_action(root, "fleet_deployment", "stop", [deployment.pk])
    restart, stop = entries()
    assert restart.action == "restart"
    assert restart.before is not None
    assert restart.after is not None
    assert restart.after["generation"] == restart.before["generation"] + 1
    assert (stop.action, stop.before["replicas"], stop.after["replicas"]) == ("stop", 1, 0)


def test_management_commands_are_recorded_as_the_command_and_the_os_user():
    call_command("createteam", "research", "--daily-tokens", "1000", **QUIET)
    out = io.StringIO()
    call_command("createapikey", "--name", "cli", "--team", "research", stdout=out, stderr=io.StringIO())
    app_out = io.StringIO()
    call_command("createappcredential", "--app-id", "app1", stdout=app_out)
    call_command("deploy", "create", "d1", "--model-path=smollm2-135m-instruct", "--replicas=1", **QUIET)
    call_command("deploy", "scale", "d1", "3", **QUIET)
    made = {(e.object_type, e.action): e for e in entries()}
    assert made["teams.team", "create"].actor_name.startswith("manage.py createteam (")
    assert made["teams.team", "create"].after["daily_tokens"] == 1000
    assert made["registry.apikey", "create"].actor_name.startswith("manage.py createapikey (")
    assert made["registry.appcredential", "create"].source == "command"
    assert made["fleet.deployment", "create"].actor_name.startswith("manage.py deploy (")
    scale = made["fleet.deployment", "scale"]
    assert (scale.before["replicas"], scale.after["replicas"]) == (1, 3)
    secret = out.getvalue().strip()
    app_secret = app_out.getvalue().split("secret:")[1].split()[0]
    stored = everything_stored()
    assert secret not in stored
    assert app_secret not in stored
    assert AppCredential.objects.get(app_id="app1").secret_ciphertext not in stored


def test_a_teams_members_edit_records_the_ids_before_and_after(root):
    team = Team.objects.create(name="blue")
    user = get_user_model().objects.get(username="root")
    url = reverse("admin:teams_team_change", args=[team.pk])
    response = root.post(url, {"name": "blue", "members": [str(user.pk)], "all_models": "on"})
    assert response.status_code == 302, response.content[:2000]
    (entry,) = entries(object_type="teams.team")
    assert (entry.before, entry.after) == ({"members": []}, {"members": [user.pk]})


def test_the_audit_page_filters_and_exports_and_needs_its_permission(root):
    call_command("createteam", "t1", **QUIET)
    call_command("createteam", "t2", **QUIET)
    create_api_key(name="k")
    url = reverse("audit:index")
    page = root.get(url, {"object": "t1"})
    assert page.status_code == 200
    assert [e.object_repr for e in page.context["page"]] == ["t1"]
    assert root.get(url, {"source": "admin"}).context["page"].paginator.count == 0
    export = root.get(reverse("audit:csv"), {"object_type": "teams.team"})
    rows = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert sorted(r["object"] for r in rows) == ["t1", "t2"]
    assert json.loads(rows[0]["after"])["name"] in ("t1", "t2")
    viewer = get_user_model().objects.create_user("viewer", password="pw", is_staff=True)
    client = Client()
    client.force_login(viewer)
    assert client.get(url).status_code == 403
    viewer.user_permissions.add(Permission.objects.get(codename="view_auditentry"))
    assert client.get(url).status_code == 200


def test_entries_older_than_the_retention_are_pruned():
    call_command("createteam", "old", **QUIET)
    call_command("createteam", "new", **QUIET)
    AuditEntry.objects.filter(object_repr="old").update(at=timezone.now() - timedelta(days=40))
    assert prune_audit(retention_days=0) == 0
    assert prune_audit(retention_days=30) == 1
    assert [e.object_repr for e in entries()] == ["new"]
