"""A worker's own `/metrics`: its engine's figures, behind the worker token (canned engine, in-process)."""

from __future__ import annotations

import httpx2
from prometheus_client.parser import text_string_to_metric_families

from inference.engines.base import EngineStats, Usage
from portal.metrics import instruments
from tests.worker.conftest import MakeClient

CHAT = {"model": "canned", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
LABELS = {"model_name": "canned"}


def samples(text: str) -> dict[str, float]:
    """`name` → value of the samples labelled with the served model (the engine's figures)."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels == LABELS
    }


async def scrape(client: httpx2.AsyncClient, **headers: str) -> dict[str, float]:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_served_requests_and_their_tokens_are_counted(client: httpx2.AsyncClient) -> None:
    before = await scrape(client)
    assert before["worker_generation_requests_total"] == 0
    answers = [(await client.post("/v1/chat/completions", json=CHAT)).json() for _ in range(2)]
    after = await scrape(client)
    assert after["worker_generation_requests_total"] == 2
    assert after["worker_prompt_tokens_total"] == sum(a["usage"]["prompt_tokens"] for a in answers)
    assert after["worker_generation_tokens_total"] == sum(a["usage"]["completion_tokens"] for a in answers)
    assert after["worker_requests_running"] == 0
    assert after["worker_requests_waiting"] == 0
    assert after["worker_generation_tokens_per_second"] > 0
    assert after["worker_draining"] == 0


async def test_engine_figures_are_read_at_scrape_time(make_client: MakeClient) -> None:
    client = make_client()
    client.ctx.limits = {"max_concurrency": 8}  # type: ignore[attr-defined]
    figures = EngineStats(in_flight=5, queued=2, tokens_per_second=40.0, kv_cache_usage=0.75)
    client.ctx.engine.stats = lambda: figures  # type: ignore[attr-defined]
    seen = await scrape(client)
    assert (seen["worker_requests_running"], seen["worker_requests_waiting"]) == (5, 2)
    assert (seen["worker_kv_cache_usage_ratio"], seen["worker_max_concurrency"]) == (0.75, 8)


async def test_a_figure_the_engine_does_not_report_is_left_out(client: httpx2.AsyncClient) -> None:
    assert "worker_kv_cache_usage_ratio" not in await scrape(client)  # the canned engine has no KV cache


async def test_the_worker_token_guards_it(make_client: MakeClient) -> None:
    client = make_client(token="s3cret")
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
    assert "worker_requests_running" in await scrape(client, Authorization="Bearer s3cret")


async def test_the_portals_figures_never_show_on_a_worker(client: httpx2.AsyncClient) -> None:
    instruments.record_refusal(subject="key:1", model="canned", reason="rpm")  # in this process's registry
    text = (await client.get("/metrics")).text
    assert "portal_" not in text
    assert "process_cpu_seconds_total" in text  # and its own process figures


async def test_the_prefix_cache_is_reported_with_its_hit_rate(make_client: MakeClient) -> None:
    client = make_client()
    client.ctx.engine.stats = lambda: EngineStats(0, 0, 0.0, prefix_cache_tokens=320)  # type: ignore[attr-defined]
    assert "worker_prefix_cache_hit_ratio" not in await scrape(client)  # nothing finished yet
    client.ctx.recent.remember("a", Usage(prompt_tokens=300, completion_tokens=5, cached_tokens=0))  # type: ignore[attr-defined]
    client.ctx.recent.remember("b", Usage(prompt_tokens=300, completion_tokens=5, cached_tokens=288))  # type: ignore[attr-defined]
    seen = await scrape(client)
    assert seen["worker_prefix_cache_tokens"] == 320
    assert seen["worker_prompt_tokens_cached_total"] == 288
    assert seen["worker_prefix_cache_hit_ratio"] == 288 / 600
