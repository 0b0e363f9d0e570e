"""The replay guard in the database: durable without Redis, unaffected by the cache, swept."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import pytest
import redis
from asgiref.sync import sync_to_async
from django.core.cache import cache
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.models import Schedule

from portal.gateway.gateway import current
from portal.signed import replay
from portal.signed.models import SeenSignature
from portal.signed.replay import SweepClock, remember_signature, sweep_seen_signatures
from registry.models import AppCredential
from registry.services.credentials import forget_cached_credential
from registry.tasks import ensure_schedules
from tests.processes import TEST_REDIS_URL
from tests.signed.conftest import App, post

pytestmark = pytest.mark.django_db(transaction=True)
REDIS_URL = TEST_REDIS_URL


@pytest.fixture(autouse=True)
async def _usage_written() -> AsyncIterator[None]:
    yield
    await current().usage.flush()  # echo writes usage in the background


async def test_replay_after_400_other_signed_requests_is_still_refused(app: App) -> None:
    # On main the local-memory cache (300 entries) had forgotten it by then: code 0.
    captured = app.body({"text": "captured"})
    assert (await post("echo", captured))["code"] == 0
    for n in range(400):
        assert (await post("echo", app.body({"n": n})))["code"] == 0

    assert (await post("echo", captured))["code"] == 9804
    assert await SeenSignature.objects.acount() == 401


async def test_replay_is_refused_after_the_cache_is_cleared(app: App) -> None:
    body = app.body({"text": "once"})
    assert (await post("echo", body))["code"] == 0

    await sync_to_async(cache.clear)()

    assert (await post("echo", body))["code"] == 9804


@pytest.fixture
def redis_cache(settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.ConnectionError:
        pytest.skip("Redis is not answering at 127.0.0.1:6379")
    settings.REDIS_URL = REDIS_URL
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
    }
    yield client
    cache.close()
    client.flushdb()


async def test_with_redis_a_replay_is_refused_even_after_redis_lost_its_keys(
    app: App, redis_cache: redis.Redis
) -> None:
    body = app.body({"text": "once"})
    assert (await post("echo", body))["code"] == 0

    await sync_to_async(redis_cache.flushdb)()  # eviction or a restart without persistence

    assert (await post("echo", body))["code"] == 9804


async def test_plain_requests_are_not_remembered(app: App) -> None:
    await AppCredential.objects.filter(pk=app.credential_id).aupdate(allow_plain=True)
    forget_cached_credential()
    assert (await post("echo", app.body({}, sign_type="plain")))["code"] == 0
    assert (await post("echo", app.body({}, sign_type="plain")))["code"] == 0

    assert await SeenSignature.objects.acount() == 0


def test_the_same_signature_of_another_app_is_not_a_replay() -> None:
    assert remember_signature(app_id="app-1", replay_key="k" * 64)
    assert remember_signature(app_id="app-2", replay_key="k" * 64)
    assert not remember_signature(app_id="app-1", replay_key="k" * 64)


def test_sweep_deletes_only_signatures_older_than_twice_the_window(settings) -> None:
    settings.SIGNED_TIMESTAMP_WINDOW = 300
    now = timezone.now()
    for name, age in (("old", 601), ("edge", 599), ("new", 0)):
        SeenSignature.objects.create(app_id=name, replay_key=name, seen_at=now - timedelta(seconds=age))

    assert sweep_seen_signatures(now=now) == 1
    assert sorted(SeenSignature.objects.values_list("app_id", flat=True)) == ["edge", "new"]


def test_a_process_sweeps_after_an_insert_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SweepClock(interval=3600)
    monkeypatch.setattr(replay, "_sweeps", clock)
    stale = timezone.now() - replay.retention() - timedelta(seconds=1)
    SeenSignature.objects.create(app_id="a", replay_key="stale-1", seen_at=stale)

    remember_signature(app_id="a", replay_key="fresh-1")
    SeenSignature.objects.create(app_id="a", replay_key="stale-2", seen_at=stale)
    remember_signature(app_id="a", replay_key="fresh-2")

    kept = sorted(SeenSignature.objects.values_list("replay_key", flat=True))
    assert kept == ["fresh-1", "fresh-2", "stale-2"]
    assert not clock.due()


def test_qcluster_schedule_sweeps_the_signatures() -> None:
    ensure_schedules()
    schedule = Schedule.objects.get(func="portal.signed.replay.sweep_seen_signatures")
    SeenSignature.objects.create(app_id="a", replay_key="k", seen_at=timezone.now() - timedelta(days=1))

    assert import_string(schedule.func)() == 1
    assert schedule.schedule_type == Schedule.MINUTES
