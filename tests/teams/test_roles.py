"""Roles on Django groups: each role's pages and refusals in the admin, the console, its websocket and
the CSV exports; a key manager sees and manages their own team's keys and credentials only."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from fleet.models import Deployment
from portal.console import live
from registry.models import ApiKey, AppCredential
from registry.services.credentials import create_app_credential
from registry.services.keys import create_api_key
from teams.models import Team
from teams.roles import ADMIN, KEY_MANAGER, OPERATOR, ROLES, VIEWER, ensure_roles

pytestmark = pytest.mark.django_db
CONSOLE = [
    "/admin/console/", "/admin/console/fleet.json", "/admin/console/usage/",
    "/admin/console/usage/records.csv", "/admin/console/audit/", "/admin/console/audit/audit.csv",
]  # fmt: skip


def member(role: str, *, team: Team | None = None, name: str = "") -> Any:
    ensure_roles()
    user = get_user_model().objects.create_user(name or role.replace(" ", "-"), is_staff=True)
    user.groups.add(Group.objects.get(name=role))
    if team is not None:
        team.members.add(user)
    return user


def client_of(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def statuses(client: Client, urls: list[str]) -> list[int]:
    return [client.get(url).status_code for url in urls]


def test_every_role_is_a_group_with_permissions():
    ensure_roles()
    for role in ROLES:
        assert Group.objects.get(name=role).permissions.exists(), role
    assert Group.objects.get(name=ADMIN).permissions.filter(codename="manage_every_team").exists()


def test_a_viewer_sees_the_console_and_usage_and_changes_nothing():
    client = client_of(member(VIEWER))
    assert statuses(client, CONSOLE) == [200] * len(CONSOLE)
    deployment = Deployment.objects.create(name="d", model_path="canned")
    change = reverse("admin:fleet_deployment_change", args=[deployment.pk])
    assert client.get(change).status_code == 200  # read-only view
    assert client.post(change, {"name": "other"}).status_code == 403
    assert client.get(reverse("admin:registry_apikey_changelist")).status_code == 403


def test_an_operator_changes_the_fleet_but_not_keys():
    client = client_of(member(OPERATOR))
    assert statuses(client, CONSOLE[:3]) == [200, 200, 200]
    assert client.get(reverse("admin:fleet_deployment_add")).status_code == 200
    assert client.get(reverse("admin:registry_servedmodel_add")).status_code == 200
    assert client.get(reverse("admin:registry_apikey_changelist")).status_code == 403
    assert client.get(reverse("admin:registry_appcredential_add")).status_code == 403


def test_a_key_manager_manages_their_own_teams_keys_and_credentials_only():
    blue, red = Team.objects.create(name="blue"), Team.objects.create(name="red")
    mine, _ = create_api_key(name="blue-key")
    theirs, _ = create_api_key(name="red-key")
    ApiKey.objects.filter(pk=mine.pk).update(team=blue)
    ApiKey.objects.filter(pk=theirs.pk).update(team=red)
    create_app_credential(app_id="blue-app", team=blue)
    create_app_credential(app_id="red-app", team=red)
    client = client_of(member(KEY_MANAGER, team=blue))
    keys = client.get(reverse("admin:registry_apikey_changelist"))
    assert [k.name for k in keys.context["cl"].result_list] == ["blue-key"]
    apps = client.get(reverse("admin:registry_appcredential_changelist"))
    assert [a.app_id for a in apps.context["cl"].result_list] == ["blue-app"]
    assert (
        client.get(reverse("admin:registry_apikey_change", args=[theirs.pk])).status_code == 302
    )  # not found
    add = client.get(reverse("admin:registry_apikey_add"))
    assert [str(t) for t in add.context["adminform"].form.fields["team"].queryset] == ["blue"]
    made = client.post(
        reverse("admin:registry_apikey_add"),
        {"name": "new", "all_models": "on", "queue_priority": "0", "team": str(red.pk)},
    )
    assert made.status_code == 200  # the form refuses another team
    assert not ApiKey.objects.filter(name="new").exists()
    made = client.post(
        reverse("admin:registry_apikey_add"),
        {"name": "new", "all_models": "on", "queue_priority": "0", "team": str(blue.pk)},
    )
    assert made.status_code == 302
    assert ApiKey.objects.get(name="new").team == blue
    # Not the fleet; their team's usage only (the usage tests check the figures).
    assert statuses(client, CONSOLE[:2]) == [403, 403]
    assert client.get("/admin/console/usage/", {"team": "red"}).status_code == 403
    offered = client.get("/admin/console/usage/").context["choices"]  # the filters' suggestions: blue's only
    assert [offered["keys"][0][1], offered["apps"], offered["teams"]] == [
        "blue-key",
        [("blue-app", "")],
        [("blue", "")],
    ]
    assert [name for name, _ in offered["users"]] == ["key-manager"]
    assert client.get("/admin/console/usage/records.csv").status_code == 200
    assert client.get("/admin/console/audit/").status_code == 403


def test_the_admin_role_manages_every_teams_keys():
    red = Team.objects.create(name="red")
    key, _ = create_api_key(name="red-key")
    ApiKey.objects.filter(pk=key.pk).update(team=red)
    client = client_of(member(ADMIN))
    keys = client.get(reverse("admin:registry_apikey_changelist"))
    assert [k.name for k in keys.context["cl"].result_list] == ["red-key"]
    assert statuses(client, CONSOLE) == [200] * len(CONSOLE)
    assert AppCredential.objects.count() == 0


def test_staff_without_a_role_is_refused_everywhere():
    client = client_of(get_user_model().objects.create_user("nobody", is_staff=True))
    assert statuses(client, CONSOLE) == [403] * len(CONSOLE)


@pytest.mark.django_db(transaction=True)
async def test_the_dashboards_websocket_takes_every_role_with_the_console_permission():
    async def connects(user: Any) -> bool:
        socket = WebsocketCommunicator(live.FleetConsumer.as_asgi(), "/ws/console/fleet/")
        socket.scope["user"] = user
        connected, _ = await socket.connect()
        if connected:
            await socket.disconnect()
        return connected

    viewer = await database_sync_to_async(member)(VIEWER)
    manager = await database_sync_to_async(member)(KEY_MANAGER)
    assert await connects(viewer)
    assert not await connects(manager)
