"""Usage by team: records carry the team whose budget they spent, the rollup groups by it, the page
and its CSVs show it, and a staff member without the usage permission sees their own team's only."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from registry.models import ApiKey, UsageDaily, UsageRecord
from registry.services.rollups import roll_up_usage
from teams.models import Team
from tests.console.test_usage import at

URL = "/admin/console/usage/"
pytestmark = pytest.mark.django_db


@pytest.fixture
def teams_usage() -> dict[str, Team]:
    teams = {name: Team.objects.create(name=name) for name in ("blue", "red")}
    for n, (name, team) in enumerate(teams.items()):
        key = ApiKey.objects.create(name=f"{name}-key", prefix=f"pfx{n}", hashed_secret=f"h{n}", team=team)
        for day in (2, 0):  # a day the rollup holds, and today (read raw)
            for i in range(n + 1):  # blue: 1 a day, red: 2 a day
                UsageRecord.objects.create(
                    created_at=at(day), request_id=f"{name}-{day}-{i}", model_name="m", api_key=key,
                    team=team, prompt_tokens=10, completion_tokens=5,
                )  # fmt: skip
    roll_up_usage()
    return teams


def staff(*, usage_permission: bool, team: Team | None = None, username: str = "viewer") -> Client:
    """A logged-in staff user's client, with the usage permission or not, a member of `team` or not."""
    user = get_user_model().objects.create_user(username, password="pw", is_staff=True)
    if usage_permission:
        user.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    if team is not None:
        team.members.add(user)
    client = Client()
    client.force_login(user)
    return client


def csv_rows(response: Any) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def chart(response) -> dict:
    return response.context["chart_data"]


def test_the_rollup_keeps_each_teams_usage_apart(teams_usage):
    rolled = {row.team_id: row.requests for row in UsageDaily.objects.all()}
    assert rolled == {teams_usage["blue"].id: 1, teams_usage["red"].id: 2}


def test_the_page_ranks_teams_and_filters_to_one(teams_usage):
    client = staff(usage_permission=True)
    top = chart(client.get(URL))["top"]["teams"]
    assert top == {"labels": ["red", "blue"], "values": [4, 2]}
    blue = client.get(URL, {"team": "blue"})
    assert blue.context["totals"]["requests"] == 2
    assert client.get(URL, {"team": "green"}).context["form"].errors["team"]


def test_the_csvs_name_the_team(teams_usage):
    client = staff(usage_permission=True)
    for kind in ("records", "daily"):
        rows = csv_rows(client.get(f"{URL}{kind}.csv", {"team": "red"}))
        assert rows, kind
        assert {row["team"] for row in rows} == {"red"}, kind


def test_a_member_without_the_usage_permission_sees_their_own_team_only(teams_usage):
    client = staff(usage_permission=False, team=teams_usage["blue"])
    page = client.get(URL)
    assert page.status_code == 200
    assert page.context["totals"]["requests"] == 2
    assert chart(page)["top"]["teams"]["labels"] == ["blue"]
    assert client.get(URL, {"team": "red"}).status_code == 403
    assert {row["team"] for row in csv_rows(client.get(f"{URL}records.csv"))} == {"blue"}
    assert json.dumps(chart(page)).count("red") == 0


def test_staff_without_the_permission_or_a_team_is_refused(teams_usage):
    assert staff(usage_permission=False).get(URL).status_code == 403
