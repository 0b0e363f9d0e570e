"""A team's budget across real portals: two daphne portals sharing Redis, one canned worker.

Concurrent clients of two keys of one team, on both portals at once, cannot
spend past the team's tokens a day: every request reserves its bound in the
same Redis script as the rpm and tpm limits before it is dispatched, and
settles with the worker's count after. The refusals are 429s naming the team.
"""

from __future__ import annotations

import asyncio
import io

import httpx2
import pytest
import redis
from django.core.management import call_command

from portal.gateway.limit_stores import DAY_SECONDS, RedisStore
from teams.models import Team
from tests.gateway.test_limits_live import CHAT, headers, portals, redis_client, redis_now, worker
from tests.portal_process import PortalProcess
from tests.processes import wait_for

__all__ = ["portals", "redis_client", "worker"]  # the fixtures this module uses
pytestmark = [pytest.mark.slow, pytest.mark.processes, pytest.mark.django_db(transaction=True)]
BUDGET = 1500


def team_key(team: str, name: str) -> str:
    out = io.StringIO()
    call_command("createapikey", "--name", name, "--team", team, stdout=out, stderr=io.StringIO())
    return out.getvalue().strip()


def day_count(client: redis.Redis, team: Team) -> int:
    day = int(redis_now(client) // DAY_SECONDS)
    return int(client.get(f"{RedisStore.prefix(f'team:{team.id}')}:day:{day}") or 0)  # type: ignore[arg-type]


def test_concurrent_clients_of_one_team_on_two_portals_never_pass_its_day_budget(portals, redis_client):
    call_command("createteam", "research", "--daily-tokens", str(BUDGET), stdout=io.StringIO())
    team = Team.objects.get(name="research")
    secrets = [team_key("research", "first"), team_key("research", "second")]
    body = {**CHAT, "max_tokens": 20}

    async def one(client: httpx2.AsyncClient, portal: PortalProcess, secret: str) -> httpx2.Response:
        return await client.post(f"{portal.url}/v1/chat/completions", json=body, headers=headers(secret))

    async def burst() -> list[httpx2.Response]:
        async with httpx2.AsyncClient(timeout=30) as client:
            calls = (one(client, portals[i % 2], secrets[i // 2 % 2]) for i in range(40))
            return await asyncio.gather(*calls)

    responses = asyncio.run(burst())
    statuses = sorted({r.status_code for r in responses})
    assert statuses == [200, 429], [r.text for r in responses if r.status_code not in (200, 429)]
    refusals = [r.json()["error"] for r in responses if r.status_code == 429]
    assert all(e["code"] == "budget_exceeded" for e in refusals)
    assert all("team 'research' budget of 1500 tokens a day" in e["message"] for e in refusals)
    served = sum(r.json()["usage"]["total_tokens"] for r in responses if r.status_code == 200)
    # Each request held its bound until it settled: the burst's real usage stays within the budget.
    assert 0 < served <= BUDGET
    assert wait_for(lambda: day_count(redis_client, team) == served, timeout=10)
