"""The dashboard by team: each team's requests, tokens and spend against its budgets, on the page, its
JSON and its websocket; a team's viewer sees their own team's group only (the usage page's rule)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from portal.console import live
from registry.models import ServedModel, UsageRecord
from registry.services.rollups import roll_up_usage
from teams.models import Team
from teams.roles import VIEWER, ensure_roles
from tests.console.test_usage import at

URL = "/admin/console/"


def make_teams() -> dict[str, Team]:
    """blue: 2 requests today (one rolled up, one raw), a day and a dollar budget; red: 3, no budget."""
    ServedModel.objects.create(
        name="m", input_price_per_million=Decimal(1000), output_price_per_million=Decimal(2000)
    )
    blue = Team.objects.create(
        name="blue", daily_tokens=100, monthly_budget_usd=Decimal("0.50"), log_requests=True
    )
    teams = {"blue": blue, "red": Team.objects.create(name="red")}

    def add(team: Team, n: int, tag: str) -> None:
        for i in range(n):
            UsageRecord.objects.create(
                created_at=at(0, hour=0), request_id=f"{team.name}-{tag}-{i}", model_name="m", team=team,
                prompt_tokens=10, completion_tokens=5,
            )  # fmt: skip

    add(blue, 1, "rolled")
    add(teams["red"], 3, "rolled")
    roll_up_usage()
    add(blue, 1, "raw")  # after the rollup: read raw
    UsageRecord.objects.create(request_id="no-team", model_name="m", prompt_tokens=99)
    return teams


def viewer(*, team: Team | None) -> Client:
    ensure_roles()
    user = get_user_model().objects.create_user(f"viewer-{team}", is_staff=True)
    user.groups.add(Group.objects.get(name=VIEWER))
    if team is not None:
        team.members.add(user)
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_the_platforms_viewer_sees_every_teams_figures_against_its_budgets():
    make_teams()
    teams = {row["name"]: row for row in viewer(team=None).get(URL + "fleet.json").json()["teams"]}
    assert list(teams) == ["blue", "red"]
    blue = teams["blue"]
    assert (blue["requests_today"], blue["tokens_today"], blue["requests_month"]) == (2, 30, 2)
    # 20 prompt tokens at $1000 per million, 10 completion tokens at $2000: $0.04 of $0.50.
    assert blue["spend_month_usd"] == pytest.approx(0.04)
    assert (blue["daily_tokens"], blue["daily_tokens_used"]) == (100, 0.3)
    assert (blue["monthly_budget_usd"], blue["monthly_budget_used"]) == (0.5, 0.08)
    assert blue["request_log_days"] == 7
    red = teams["red"]
    assert (red["requests_today"], red["tokens_month"], red["daily_tokens_used"]) == (3, 45, None)
    assert red["request_log_days"] is None


@pytest.mark.django_db
def test_a_teams_viewer_sees_their_own_teams_group_only():
    teams = make_teams()
    client = viewer(team=teams["blue"])
    data = client.get(URL + "fleet.json").json()
    assert [row["name"] for row in data["teams"]] == ["blue"]
    assert "red" not in str(data["teams"])
    page = client.get(URL)
    assert [row["name"] for row in page.context["snapshot"]["teams"]] == ["blue"]
    assert 'id="fleet-teams"' in page.content.decode()
    # The usage page follows the same rule: their team, not another's.
    assert client.get("/admin/console/usage/", {"team": "red"}).status_code == 403


@pytest.mark.django_db
def test_the_team_figures_cost_a_fixed_number_of_queries(django_assert_max_num_queries):
    make_teams()
    client = viewer(team=None)
    client.get(URL + "fleet.json")  # the permission cache, the trends' cache
    for n in range(20):
        Team.objects.create(name=f"t{n}", daily_tokens=10)
    with django_assert_max_num_queries(20):
        assert len(client.get(URL + "fleet.json").json()["teams"]) == 22


@pytest.mark.django_db(transaction=True)
async def test_the_websocket_sends_a_teams_viewer_their_own_team_only():
    teams = await database_sync_to_async(make_teams)()

    async def first_snapshot(team: Team | None) -> dict[str, Any]:
        client = await database_sync_to_async(viewer)(team=team)
        user = await database_sync_to_async(lambda: get_user_model().objects.get(username=f"viewer-{team}"))()
        socket = WebsocketCommunicator(live.FleetConsumer.as_asgi(), "/ws/console/fleet/")
        socket.scope["user"] = user
        connected, _ = await socket.connect()
        assert connected, client
        snapshot = await socket.receive_json_from(timeout=10)
        await socket.disconnect()
        return snapshot

    mine = await first_snapshot(teams["blue"])
    assert [row["name"] for row in mine["teams"]] == ["blue"]
    every = await first_snapshot(None)
    assert [row["name"] for row in every["teams"]] == ["blue", "red"]
