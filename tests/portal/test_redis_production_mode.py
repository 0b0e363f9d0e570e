"""Production mode: with REDIS_URL set, portal copies share counters, the replay guard and channels.

Real portal processes and the real Redis at 127.0.0.1:6379 (TEST_REDIS_URL, flushed
before each test).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import cast

import httpx2
import pytest
import redis

from portal.signed.client import sign_body
from registry.services.credentials import create_app_credential
from registry.services.keys import create_api_key
from tests.portal_process import PortalProcess
from tests.portal_process import two_portals as start_two_portals
from tests.processes import REPO_ROOT, TEST_REDIS_URL, subprocess_env

REDIS_URL = TEST_REDIS_URL
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def redis_env() -> dict[str, str]:
    try:
        redis.Redis.from_url(REDIS_URL).flushdb()
    except redis.ConnectionError:
        pytest.skip("Redis is not answering at 127.0.0.1:6379")
    return subprocess_env({"REDIS_URL": REDIS_URL})


@pytest.fixture
def two_portals(redis_env: dict[str, str]) -> Iterator[tuple[PortalProcess, PortalProcess]]:
    yield from start_two_portals(env=redis_env)


def _minute() -> int:
    """The limits' window as Redis's clock counts it (the limits count fixed minutes on it)."""
    seconds, _ = cast(tuple[int, int], redis.Redis.from_url(REDIS_URL).time())
    return seconds // 60


def test_rate_limit_is_counted_across_portal_copies(two_portals):
    first, second = two_portals
    # Three requests that straddle a minute's end are counted in two windows; such a try is redone.
    for attempt in range(3):
        _, secret = create_api_key(name=f"shared-{attempt}", requests_per_minute=2)
        headers = {"Authorization": f"Bearer {secret}"}
        started = _minute()
        statuses = [
            httpx2.get(f"{portal.url}/v1/models", headers=headers, timeout=10).status_code
            for portal in (first, second, first)
        ]
        if _minute() == started:
            break
    assert statuses == [200, 200, 429]


def test_a_signed_request_accepted_by_one_portal_is_a_replay_at_another(two_portals):
    first, second = two_portals
    _, secret = create_app_credential(app_id="shared-app")
    fields = {"appId": "shared-app", "version": "1", "timestamp": int(time.time()), "data": {"text": "hi"}}
    body = sign_body(fields, secret=secret)
    replies = [
        httpx2.post(f"{portal.url}/api/echo", content=json.dumps(body), timeout=10).json()
        for portal in (first, second)
    ]
    assert replies[0]["code"] == 0
    assert replies[1]["code"] == 9804


def test_redis_url_switches_the_channel_layer_and_cache(redis_env):
    # What the settings module builds from REDIS_URL, checked in a fresh process.
    probe = (
        "import asyncio; from channels.layers import get_channel_layer; from django.core.cache import cache;"
        "layer = get_channel_layer();"
        "asyncio.run(layer.send('probe', {'type': 'probe.message', 'n': 7}));"
        "got = asyncio.run(layer.receive('probe'));"
        "cache.set('probe-key', 'v'); print(type(layer).__name__, got['n'], cache.get('probe-key'))"
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", probe],
        cwd=REPO_ROOT,
        env=redis_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "RedisChannelLayer 7 v"
    stored = cast(list[bytes], redis.Redis.from_url(REDIS_URL).keys("*"))
    assert any(b"probe-key" in key for key in stored)
