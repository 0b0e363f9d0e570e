"""Teams through the OpenAI API, in-process against a fake upstream: budgets, prices, the team's models.

A team's money budget counts each request at the served model's prices,
reserved by its bound and settled with the worker's usage; the refusal is a
429 in OpenAI's shape naming the budget. A key spends its team's budget and
its own; a team that lists models narrows its keys to them.
"""

from __future__ import annotations

import io
from decimal import Decimal

import httpx2
import pytest
from asgiref.sync import sync_to_async
from django.core.management import call_command

from portal.gateway.gateway import current
from portal.gateway.limits import estimate
from portal.gateway.tasks import drain
from registry.models import ApiKey, ServedModel, UsageRecord
from teams.models import Team
from tests.api.test_views import error_of, post
from tests.gateway.conftest import add_worker, chat_result
from tests.limit_fixtures import use_store

pytestmark = pytest.mark.django_db(transaction=True)
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture(params=["memory", "redis"])
def counted_in(request: pytest.FixtureRequest, settings) -> str:
    use_store(request, settings)
    settings.USAGE_FLUSH_SECONDS = 0.05
    current().limits.memory.clear()
    return request.param


def create_team_key(*team_args: str) -> str:
    call_command("createteam", *team_args, stdout=io.StringIO())
    out = io.StringIO()
    quiet = io.StringIO()
    call_command("createapikey", "--name", "team-key", "--team", team_args[0], stdout=out, stderr=quiet)
    return out.getvalue().strip()


async def test_a_money_budget_counts_the_models_prices_and_refuses_in_openai_shape(
    served_model, upstream, counted_in
):
    # $1000 per million tokens either way: a request reserves (its bound + 5) × 1000 micro-dollars
    # and settles at its 3 + 2 tokens (chat_result's usage): 5000 micro-dollars.
    reserved, settled, budget = estimate(CHAT).total * 1000, 5000, 110_000
    await ServedModel.objects.filter(pk=served_model.pk).aupdate(
        input_price_per_million=Decimal(1000), output_price_per_million=Decimal(1000)
    )
    await sync_to_async(add_worker)(served_model, "w1")
    seen = upstream(lambda r: httpx2.Response(200, json=chat_result()))
    secret = await sync_to_async(create_team_key)("research", "--monthly-budget", "0.11")
    statuses = []
    for _ in range(30):
        response = await post("/v1/chat/completions", CHAT, secret)
        statuses.append(response.status_code)
        await drain()  # the settling of one request before the next
        if response.status_code != 200:
            break
    assert response.status_code == 429, response.content
    error = error_of(response)
    assert error["code"] == "budget_exceeded"
    assert "team 'research' budget of $0.11 a month" in error["message"]
    assert int(response.headers["Retry-After"]) > 0
    # Each request passes while the spending so far plus its reservation fits the budget.
    served = statuses.count(200)
    assert len(seen) == served
    assert served == (budget - reserved) // settled + 1
    team_id = await Team.objects.filter(name="research").values_list("id", flat=True).aget()
    assert await UsageRecord.objects.filter(team_id=team_id, status="ok").acount() == served


async def test_a_keys_own_day_budget_and_its_teams_models(served_model, upstream, counted_in):
    await ServedModel.objects.acreate(name="other")
    await sync_to_async(add_worker)(served_model, "w1")
    upstream(lambda r: httpx2.Response(200, json=chat_result()))
    secret = await sync_to_async(create_team_key)("narrow", "--models", "tiny", "--daily-tokens", "100000")
    await ApiKey.objects.filter(name="team-key").aupdate(daily_tokens=10)
    refused = await post("/v1/chat/completions", {**CHAT, "model": "other"}, secret)
    assert refused.status_code == 403, refused.content  # the team lists tiny only
    over = await post("/v1/chat/completions", CHAT, secret)
    assert over.status_code == 429
    assert "API key 'team-key' budget of 10 tokens a day" in error_of(over)["message"]


def test_createteam_refuses_a_taken_name_and_a_bad_budget(db):
    call_command("createteam", "ops", "--daily-tokens", "5")
    with pytest.raises(Exception, match="already"):
        call_command("createteam", "ops")
    with pytest.raises(Exception, match="dollars"):
        call_command("createteam", "ops2", "--monthly-budget", "lots")
    with pytest.raises(Exception, match="No team"):
        call_command("createapikey", "--name", "x", "--team", "nobody")
    team = Team.objects.get(name="ops")
    assert (team.daily_tokens, team.monthly_tokens, team.all_models) == (5, None, True)
