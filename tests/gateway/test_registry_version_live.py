"""An admin change reaches every portal within seconds through the registry version, without a restart.

Two real portals share the test database and Redis, with lookups cached for
five minutes: without the version they would keep serving a revoked key and a
disabled model that long. The change is made as the admin makes it (a save,
whose signal bumps the version in the shared cache).
"""

from __future__ import annotations

from contextlib import contextmanager

import httpx2
import pytest
import redis
from django.test import override_settings
from django.utils import timezone

from registry.models import ApiKey, ServedModel
from registry.services.keys import create_api_key
from tests.portal_process import two_portals
from tests.processes import TEST_REDIS_URL, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
REDIS_URL = TEST_REDIS_URL
SLOW_CACHES = {"REDIS_URL": REDIS_URL, "WORKER_CACHE_SECONDS": "300", "API_KEY_CACHE_SECONDS": "300"}
SHARED_CACHE = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}


@pytest.fixture(autouse=True)
def _redis() -> None:
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError:
        pytest.skip("Redis is not answering at 127.0.0.1:6379")


def status(base: str, secret: str, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {"Authorization": f"Bearer {secret}"}
    return httpx2.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=10).status_code


def test_a_revoked_key_and_a_disabled_model_stop_working_on_every_portal_within_seconds() -> None:
    ServedModel.objects.create(name="lonely")  # no worker: a valid request gets 503
    key, secret = create_api_key(name="soon revoked")
    _, other = create_api_key(name="stays")
    with (
        contextmanager(two_portals)(extra_env=SLOW_CACHES) as portals,
        override_settings(CACHES=SHARED_CACHE),
    ):
        for portal in portals:  # both portals now hold the key and the model in their caches
            assert status(portal.url, secret, "lonely") == 503
            assert status(portal.url, other, "lonely") == 503
        model = ServedModel.objects.get(name="lonely")
        model.enabled = False
        model.save()  # as the admin's change form does
        key = ApiKey.objects.get(pk=key.pk)
        key.revoked_at = timezone.now()
        key.save()
        for portal in portals:
            assert wait_for(lambda url=portal.url: status(url, secret, "lonely") == 401, timeout=5)
            assert wait_for(lambda url=portal.url: status(url, other, "lonely") == 404, timeout=5)
