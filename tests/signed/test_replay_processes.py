"""Two real portal processes share the replay guard through the database, with and without Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx2
import pytest
import redis

from portal.signed.client import sign_body
from registry.services.credentials import create_app_credential
from tests.portal_process import PortalProcess, two_portals
from tests.processes import TEST_REDIS_URL, subprocess_env

REDIS_URL = TEST_REDIS_URL
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def portals_without_redis() -> Iterator[tuple[PortalProcess, PortalProcess]]:
    env = subprocess_env()
    env.pop("REDIS_URL", None)
    yield from two_portals(env=env)


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.ConnectionError:
        pytest.skip("Redis is not answering at 127.0.0.1:6379")
    yield client
    client.flushdb()


@pytest.fixture
def portals_with_redis(redis_client: redis.Redis) -> Iterator[tuple[PortalProcess, PortalProcess]]:
    yield from two_portals(env=subprocess_env({"REDIS_URL": REDIS_URL}))


def signed_body() -> str:
    _, secret = create_app_credential(app_id="shared-app")
    fields = {"appId": "shared-app", "version": "1", "timestamp": int(time.time()), "data": {"text": "hi"}}
    return json.dumps(sign_body(fields, secret=secret))


def code_at(portal: PortalProcess, body: str) -> int:
    return int(httpx2.post(f"{portal.url}/api/echo", content=body, timeout=10).json()["code"])


def test_without_redis_a_request_accepted_by_one_portal_is_a_replay_at_another(portals_without_redis):
    first, second = portals_without_redis
    body = signed_body()

    assert [code_at(first, body), code_at(second, body), code_at(first, body)] == [0, 9804, 9804]


def test_with_redis_a_replay_is_refused_at_another_portal_after_redis_lost_its_keys(
    portals_with_redis, redis_client
):
    first, second = portals_with_redis
    body = signed_body()
    assert code_at(first, body) == 0

    redis_client.flushdb()

    assert code_at(second, body) == 9804
