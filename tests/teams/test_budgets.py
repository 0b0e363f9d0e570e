"""Budgets in the limiter: tokens a day and a month, dollars a month, in memory and in the real Redis.

They ride on a quota like rpm and tpm, in the same store call: a refusal
counts nothing, settling replaces the reservation by what was used, and the
Redis script's calendar agrees with Python's.
"""

from __future__ import annotations

from datetime import date

import pytest
import redis
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model

from portal.chat.owners import Owner
from portal.chat.streaming import chat_caller
from portal.gateway.gateway import current
from portal.gateway.limit_stores import CALENDAR_LUA, MemoryStore, Quota, month_of, seconds_to_next
from portal.gateway.limits import LimitExceeded, TokenEstimate, reserve
from portal.gateway.tasks import drain
from portal.signed.envelope import Code, SignedApiError
from portal.signed.guard import reserve_for_app
from registry.services.credentials import aget_credential, create_app_credential
from teams.budgets import BudgetLimits
from teams.services import create_team

pytest_plugins = ["tests.limit_fixtures"]

TEAM = BudgetLimits("team:budget-test", "team 'research'", tokens_per_day=100)


def cost(tokens: int) -> TokenEstimate:
    return TokenEstimate(prompt=tokens)


async def test_a_day_budget_refuses_what_would_pass_it_and_names_the_team(backend):
    quota = Quota("key:b1", budgets=(TEAM,))
    first = await reserve(current().limits, quota, cost(60))
    with pytest.raises(LimitExceeded) as refused:
        await reserve(current().limits, quota, cost(50))
    assert refused.value.reason == "budget_day"
    assert "team 'research'" in refused.value.message
    assert "100 tokens a day" in refused.value.message
    assert refused.value.retry_after is not None
    assert 0 < refused.value.retry_after <= 86_401
    first.settle(20)  # it used 20 of the 60 it reserved
    await drain()
    (await reserve(current().limits, quota, cost(80))).settle(80)
    await drain()
    with pytest.raises(LimitExceeded):
        await reserve(current().limits, quota, cost(1))


async def test_a_refusal_by_the_keys_own_budget_counts_nothing_against_the_team(backend):
    own = BudgetLimits("key:b2", "API key 'ci'", tokens_per_month=30)
    quota = Quota("key:b2", budgets=(TEAM, own))
    with pytest.raises(LimitExceeded) as refused:
        await reserve(current().limits, quota, cost(40))
    assert refused.value.reason == "budget_month"
    assert "API key 'ci'" in refused.value.message
    # The team's 100 a day are whole: another key of the team may take them all.
    (await reserve(current().limits, Quota("key:b3", budgets=(TEAM,)), cost(100))).settle(100)


async def test_a_money_budget_counts_the_models_prices_and_settles_with_the_tokens_used(backend):
    # $1 per million prompt tokens, $2 per million generated: a micro-dollar a prompt token.
    money = BudgetLimits("team:b4", "team 'cheap'", microusd_per_month=1000)
    quota = Quota("key:b4", budgets=(money,))
    priced = TokenEstimate(prompt=100, completions=1, max_tokens=200, input_price=1.0, output_price=2.0)
    assert priced.microusd == 500
    held = [await reserve(current().limits, quota, priced) for _ in range(2)]
    with pytest.raises(LimitExceeded) as refused:
        await reserve(current().limits, quota, priced)
    assert refused.value.reason == "budget_usd"
    assert "team 'cheap' budget of $0.001 a month" in refused.value.message
    assert "reserves $0.0005" in refused.value.message
    for reservation in held:
        reservation.settle(100, 50)  # 100 + 2 × 50 = 200 micro-dollars instead of 500
    await drain()
    (await reserve(current().limits, quota, priced)).settle(0)  # 400 + 500 fit in 1000
    await drain()
    with pytest.raises(LimitExceeded):
        await reserve(current().limits, quota, TokenEstimate(prompt=700, input_price=1.0))


async def test_without_prices_a_money_budget_counts_nothing(backend):
    quota = Quota("key:b5", budgets=(BudgetLimits("team:b5", "team 'free'", microusd_per_month=1),))
    for _ in range(3):
        (await reserve(current().limits, quota, cost(1000))).settle(1000)


def test_the_redis_calendar_agrees_with_pythons(redis_url):
    client = redis.Redis.from_url(redis_url)
    month_in_lua = client.register_script(CALENDAR_LUA + "return month_of(tonumber(ARGV[1]))")
    first_in_lua = client.register_script(CALENDAR_LUA + "return first_day(tonumber(ARGV[1]))")
    epoch = date(1970, 1, 1).toordinal()
    for day in [0, 59, 60, 365, 11_016, 11_017, 19_782, 20_513, 20_514, 20_819, 20_820, 47_541]:
        assert month_in_lua(args=[day]) == month_of(day), day
        when = date.fromordinal(epoch + day)
        first = date(when.year, when.month, 1).toordinal() - epoch
        assert first_in_lua(args=[month_of(day)]) == first, day


def test_memory_budgets_start_again_with_the_next_day():
    now = [86_400.0 * 20_000 + 10]
    store = MemoryStore(clock=lambda: now[0])
    quota = Quota("key:b6", budgets=(BudgetLimits("team:b6", "team", tokens_per_day=10),))
    assert store._reserve(quota, 10, "").outcome == "ok"
    assert store._reserve(quota, 1, "").outcome == "day"
    now[0] += 86_400
    assert store._reserve(quota, 10, "").outcome == "ok"


def test_the_wait_for_a_month_budget_runs_to_the_first_of_the_next_month():
    new_year = 1_798_761_600  # 2027-01-01T00:00:00Z
    assert seconds_to_next("month", new_year - 10) == 11
    assert seconds_to_next("day", new_year - 10) == 11


@pytest.mark.django_db(transaction=True)
async def test_a_chat_user_spends_their_teams_budget_and_uses_its_models():
    user = await get_user_model().objects.acreate(username="chatter")
    team = await sync_to_async(create_team)(name="writers", daily_tokens=50)
    await team.members.aadd(user)
    caller = await chat_caller(Owner(user_id=user.id))
    assert caller.team_id == team.id
    assert caller.quota is not None
    assert caller.quota.budgets == (BudgetLimits(f"team:{team.id}", "team 'writers'", tokens_per_day=50),)
    assert caller.allowed_model_ids is None  # the team allows every model
    (await reserve(current().limits, caller.quota, cost(50))).settle(50)
    await drain()
    with pytest.raises(LimitExceeded, match="team 'writers'"):
        await reserve(current().limits, caller.quota, cost(1))
    anonymous = await chat_caller(Owner(session_key="s"))
    assert anonymous.quota is not None
    assert (anonymous.team_id, anonymous.quota.budgets) == (None, ())


@pytest.mark.django_db(transaction=True)
async def test_an_apps_team_budget_is_refused_in_the_signed_envelope():
    team = await sync_to_async(create_team)(name="apps", monthly_tokens=10)
    await sync_to_async(create_app_credential)(app_id="budgeted", team=team)
    snapshot = await aget_credential("budgeted")
    assert snapshot is not None
    assert snapshot.team_id == team.id
    with pytest.raises(SignedApiError) as refused:
        await reserve_for_app(snapshot, {"prompt": "x" * 20})
    assert refused.value.code == Code.RATE_LIMITED
    assert "team 'apps' budget of 10 tokens a month" in str(refused.value)
