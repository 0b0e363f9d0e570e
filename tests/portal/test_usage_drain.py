"""A portal stopped with SIGTERM writes the usage records it still holds before it exits.

The embedded default keeps records in memory for USAGE_FLUSH_SECONDS; here that
is a minute, so only the drain on shutdown can write them. With REDIS_URL a
record is in the shared stream before the response ends: a portal killed with
-9 loses none, and another portal writes them.
"""

from __future__ import annotations

import httpx2
import pytest
import redis

from registry.models import ServedModel, UsageRecord
from registry.services.keys import create_api_key
from tests.portal_process import start_portal
from tests.processes import subprocess_env, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
REQUESTS = 5
MODEL = "without-workers"


def send_requests_no_worker_takes(url: str, secret: str) -> list[str]:
    """Requests that end at once (503: the model has no worker) and still leave one usage record each."""
    ServedModel.objects.get_or_create(name=MODEL)
    ids = []
    for _ in range(REQUESTS):
        answer = httpx2.post(
            f"{url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=10,
        )
        assert answer.status_code == 503, answer.text
        ids.append(answer.headers["X-Request-Id"])
    return ids


def test_sigterm_drains_the_usage_records_held_in_memory():
    _, secret = create_api_key(name="drain")
    portal = start_portal(extra_env={"USAGE_FLUSH_SECONDS": "60"})
    try:
        ids = send_requests_no_worker_takes(portal.url, secret)
        assert UsageRecord.objects.count() == 0  # held in the portal's memory
        portal.proc.terminate()
        assert portal.proc.wait(30) == 0, portal.output()
    finally:
        portal.kill()
    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == sorted(ids)


def test_records_in_the_shared_stream_outlive_a_portal_killed_with_9(redis_url):
    _, secret = create_api_key(name="kill")
    env = subprocess_env({"REDIS_URL": redis_url, "USAGE_CLAIM_SECONDS": "1"})
    first = start_portal(env=env)
    try:
        ids = send_requests_no_worker_takes(first.url, secret)
    finally:
        first.kill()
    # Whatever the killed portal had not written yet is in the stream: a second portal writes it.
    with start_portal(env=env):
        assert wait_for(lambda: UsageRecord.objects.count() == REQUESTS, timeout=20)
    assert sorted(UsageRecord.objects.values_list("request_id", flat=True)) == sorted(ids)
    assert redis.Redis.from_url(redis_url).xlen("portal:usage") == 0
