"""`GET /metrics`: requests, tokens, refusals and failovers counted; who may scrape it.

Requests go through the `/v1` views and the relay to a fake upstream (httpx2's
MockTransport, gateway logic only); the figures are read back from the view's
own exposition. The registry lives as long as the test process, so every
assertion is on a difference before and after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from asgiref.sync import sync_to_async
from django.http import HttpResponse
from django.test import AsyncClient, RequestFactory, override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from portal.gateway import relay
from portal.gateway.tasks import drain
from portal.metrics.heartbeats import read_workers
from portal.metrics.views import metrics
from registry.models import Worker, WorkerStatus
from registry.services import keys
from registry.services.cache import forget_all
from tests.api.test_views import CHAT, make_key, post
from tests.gateway.conftest import add_worker, chunk, served_model, sse, upstream
from tests.portal_process import start_portal
from tests.processes import REPO_ROOT, start_worker, wait_for

__all__ = ["served_model", "upstream"]
pytestmark = pytest.mark.django_db(transaction=True)
USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
STREAM = {**CHAT, "stream": True}


@pytest.fixture(autouse=True)
def _no_key_cache():
    forget_all()
    yield
    forget_all()


async def scrape(**extra: Any) -> str:
    response = await AsyncClient().get("/metrics", **extra)
    assert response.status_code == 200, response.content
    return response.content.decode()


def value(text: str, name: str, **labels: str) -> float:
    """The sample `name{labels}` of an exposition (exactly those labels), 0 when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def grown(before: str, after: str, name: str, **labels: str) -> float:
    """How much `name{labels}` grew between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)


def streamed(request: httpx2.Request) -> httpx2.Response:
    assert json.loads(request.content)["stream"]
    return httpx2.Response(200, content=sse(chunk("a"), chunk("b"), chunk(None, USAGE)))


async def test_a_served_request_counts_its_status_tokens_and_timings(served_model, upstream):
    await sync_to_async(add_worker)(served_model, "w1")
    upstream(streamed)
    secret = await make_key()
    labels = {"model": "tiny", "worker": "w1"}
    before = await scrape()

    response = await post("/v1/chat/completions", STREAM, secret)
    assert response.status_code == 200
    assert [part async for part in response.streaming_content]
    await drain()

    after = await scrape()
    for name, grew in [
        ("portal_requests_total", 1),
        ("portal_prompt_tokens_total", 3),
        ("portal_completion_tokens_total", 4),
        ("portal_time_to_first_token_seconds_count", 1),
        ("portal_inter_token_latency_seconds_count", 1),
        ("portal_request_duration_seconds_count", 1),
    ]:
        extra = {"status": "200"} if name == "portal_requests_total" else {}
        if "first_token" in name or "inter_token" in name:
            extra = {"role": "both"}
        assert grown(before, after, name, **labels, **extra) == grew, name
    # Relative: a test elsewhere in this process may have left a stream it never read open.
    assert grown(before, after, "portal_requests_in_flight", **labels) == 0


async def test_a_request_refused_by_a_limit_counts_as_a_refusal_and_a_429(served_model, upstream):
    await sync_to_async(add_worker)(served_model, "w1")
    upstream(streamed)
    secret = await make_key(requests_per_minute=1)
    refusal = {"door": "api", "model": "tiny", "reason": "rpm"}
    refused = {"model": "tiny", "worker": "", "status": "429"}
    before = await scrape()

    first = await post("/v1/chat/completions", STREAM, secret)
    assert [part async for part in first.streaming_content]
    assert (await post("/v1/chat/completions", STREAM, secret)).status_code == 429
    await drain()

    after = await scrape()
    assert grown(before, after, "portal_rate_limit_refusals_total", **refusal) == 1
    assert grown(before, after, "portal_requests_total", **refused) == 1
    served = {"model": "tiny", "worker": "w1", "status": "200"}
    assert grown(before, after, "portal_requests_total", **served) == 1


async def test_a_model_name_that_does_not_resolve_never_becomes_a_label(served_model, upstream):
    secret = await make_key()
    unresolved = {"model": "", "worker": "", "status": "404"}
    before = await scrape()

    unknown = await post("/v1/chat/completions", {**CHAT, "model": "made-up-by-a-client"}, secret)
    assert unknown.status_code == 404
    with pytest.raises(relay.GatewayError):  # a door that leaves resolving to the relay
        await relay.chat_completion({**CHAT, "model": "another-made-up-name"}, caller=relay.Caller())
    await drain()

    after = await scrape()
    assert "made-up" not in after
    assert grown(before, after, "portal_requests_total", **unresolved) == 1


async def test_a_failover_counts_against_the_worker_that_failed(served_model, upstream):
    await sync_to_async(add_worker)(served_model, "w1")
    await sync_to_async(add_worker)(served_model, "w2")
    calls: list[str] = []

    def busy_then_served(request: httpx2.Request) -> httpx2.Response:
        calls.append(request.url.host)
        if len(calls) == 1:
            return httpx2.Response(503, json={"error": {"message": "full", "type": "overloaded_error"}})
        return streamed(request)

    upstream(busy_then_served)
    before = await scrape()
    stream = await relay.stream_chat_completion(dict(STREAM), caller=relay.Caller())
    assert [chunk async for chunk in stream]
    await drain()

    after = await scrape()
    failed = {"model": "tiny", "worker": calls[0], "reason": "busy"}
    assert grown(before, after, "portal_dispatch_failovers_total", **failed) == 1


async def test_a_request_is_in_flight_on_its_worker_until_it_ends(served_model, upstream):
    await sync_to_async(add_worker)(served_model, "w1")
    upstream(streamed)
    labels = {"model": "tiny", "worker": "w1"}
    before = value(await scrape(), "portal_requests_in_flight", **labels)
    stream = await relay.stream_chat_completion(dict(STREAM), caller=relay.Caller())
    assert value(await scrape(), "portal_requests_in_flight", **labels) == before + 1
    assert [chunk async for chunk in stream]
    assert value(await scrape(), "portal_requests_in_flight", **labels) == before


async def test_workers_heartbeat_figures_are_shown_per_worker(served_model):
    worker = await sync_to_async(add_worker)(served_model, "w1", backend="canned", device="cpu")
    await Worker.objects.filter(pk=worker.pk).aupdate(
        in_flight=3, queued=2, tokens_per_second=12.5, kv_cache_usage=0.25, last_heartbeat=timezone.now()
    )
    gone = await sync_to_async(add_worker)(served_model, "gone")
    await Worker.objects.filter(pk=gone.pk).aupdate(expires_at=timezone.now() - timedelta(seconds=1))
    text = await scrape()
    assert value(text, "portal_worker_in_flight", worker="w1") == 3
    assert value(text, "portal_worker_queued", worker="w1") == 2
    assert value(text, "portal_worker_tokens_per_second", worker="w1") == 12.5
    assert value(text, "portal_worker_kv_cache_usage_ratio", worker="w1") == 0.25
    assert 0 <= value(text, "portal_worker_heartbeat_age_seconds", worker="w1") < 60
    assert value(text, "portal_worker_status", worker="w1", status=WorkerStatus.ONLINE) == 1
    assert value(text, "portal_worker_status", worker="gone", status=WorkerStatus.OFFLINE) == 1
    assert value(text, "portal_worker_status", worker="gone", status=WorkerStatus.ONLINE) == 0
    info = {"worker": "w1", "kind": "local", "backend": "canned", "device": "cpu"}
    assert value(text, "portal_worker_info", **info) == 1


def test_the_heartbeat_figures_are_read_in_one_query(served_model, django_assert_num_queries):
    for name in ("w1", "w2", "w3"):
        add_worker(served_model, name)
    with django_assert_num_queries(1):
        assert [w.identity for w in read_workers()] == ["w1", "w2", "w3"]


def scrape_from(rf: RequestFactory, address: str, **headers: str) -> HttpResponse:
    """Call the view as a client at `address` would (Django's ASGI test client is always 127.0.0.1)."""
    return metrics(rf.get("/metrics", REMOTE_ADDR=address, headers=headers))


@override_settings(METRICS_TOKEN="metrics-secret")
def test_with_a_token_set_a_scraper_must_present_it(rf, db):
    assert scrape_from(rf, "127.0.0.1").status_code == 401
    wrong = scrape_from(rf, "10.1.2.3", Authorization="Bearer nope")
    assert (wrong.status_code, wrong["WWW-Authenticate"]) == (401, "Bearer")
    right = scrape_from(rf, "10.1.2.3", Authorization="Bearer metrics-secret")
    assert right.status_code == 200
    assert right["Content-Type"].startswith("text/plain")
    assert "# TYPE portal_requests_total counter" in right.content.decode()


def test_without_a_token_only_unforwarded_loopback_clients_may_scrape(rf, db):
    assert scrape_from(rf, "::1").status_code == 200
    assert scrape_from(rf, "10.1.2.3").status_code == 403
    # nginx on the same host connects from loopback, and says whom it forwards
    assert scrape_from(rf, "127.0.0.1", **{"X-Forwarded-For": "203.0.113.9"}).status_code == 403


def _child(directory: str, code: str, **options: Any) -> subprocess.Popen[str]:
    """A Python process with the portal's settings that imports the instruments, then runs `code`."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PROMETHEUS_MULTIPROC_DIR": directory}
    script = "import django; django.setup()\nfrom portal.metrics import instruments\n" + code
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, text=True, **options)


def _served_by(worker: str) -> str:
    return (
        f"instruments.record_request(model='tiny', worker='{worker}', status=200, prompt_tokens=3, "
        "completion_tokens=4, ttft=0.1, latency=0.5, token_gap=0.01)\n"
    )


def test_several_processes_give_one_view_in_multiprocess_mode(tmp_path, rf, db):
    for worker in ("w1", "w1", "w2"):
        assert _child(str(tmp_path), _served_by(worker)).wait(60) == 0
    # One more holds a request in flight until its stdin closes, then exits.
    holding = (
        "import sys\ninstruments.start_in_flight('tiny', 'w1')\nprint('held', flush=True)\nsys.stdin.read()\n"
    )
    child = _child(str(tmp_path), holding, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdout.readline().strip() == "held"  # type: ignore[union-attr]
    with override_settings(PROMETHEUS_MULTIPROC_DIR=str(tmp_path)):
        text = scrape_from(rf, "127.0.0.1").content.decode()  # what any portal process of the host answers
        assert value(text, "portal_requests_total", model="tiny", worker="w1", status="200") == 2
        assert value(text, "portal_completion_tokens_total", model="tiny", worker="w2") == 4
        ttft = "portal_time_to_first_token_seconds_count"
        assert value(text, ttft, model="tiny", worker="w1", role="both") == 2
        assert value(text, "portal_requests_in_flight", model="tiny", worker="w1") == 1
        child.communicate("", timeout=60)  # closes its stdin: it ends its request and exits
        assert child.returncode == 0
        text = scrape_from(rf, "127.0.0.1").content.decode()
        # The gauge counts live processes only; the counters of processes gone still count.
        assert value(text, "portal_requests_in_flight", model="tiny", worker="w1") == 0
        assert value(text, "portal_requests_total", model="tiny", worker="w1", status="200") == 2


def test_an_empty_multiprocess_directory_is_refused_at_start():
    child = _child("", "", stderr=subprocess.PIPE)
    _, errors = child.communicate(timeout=60)
    assert child.returncode != 0
    assert "PROMETHEUS_MULTIPROC_DIR" in errors


@pytest.mark.slow
def test_a_real_portal_counts_a_request_served_by_a_real_worker():
    """daphne in front of a canned-engine worker process: both scraped over loopback."""
    base = ("--model-path", "canned", "--backend", "canned", "--heartbeat-interval", "1")
    with start_worker(*base, "--model-names", "live") as worker, start_portal() as portal:
        _, secret = keys.create_api_key(name="live")
        body = {**CHAT, "model": "live", "max_tokens": 3, "stream": True}
        with httpx2.Client(timeout=30) as http:
            answer = http.post(
                f"{portal.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}
            )
            assert answer.status_code == 200
            identity = Worker.objects.get(address=worker.address).identity
            text = http.get(f"{portal.url}/metrics").text
            assert value(text, "portal_requests_total", model="live", worker=identity, status="200") == 1
            assert value(text, "portal_completion_tokens_total", model="live", worker=identity) == 3
            assert value(text, "portal_worker_status", worker=identity, status=WorkerStatus.ONLINE) == 1

            def generated() -> float:  # counted when the worker closes the generation, after [DONE]
                return value(
                    http.get(f"{worker.address}/metrics").text,
                    "worker_generation_tokens_total",
                    model_name="live",
                )

            assert wait_for(lambda: generated() == 3, timeout=5)
