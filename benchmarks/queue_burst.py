"""A burst of 4x the fleet's capacity arriving at once, with the shared request queue and without it.

    python benchmarks/queue_burst.py [--workers 2] [--slots 4] [--burst-factor 4] [--max-tokens 32]
                                     [--redis-url redis://127.0.0.1:6379/14]

In one run: a scratch SQLite database, canned-token workers (a named fake:
each token takes --canned-token-delay, so a request's length is known) with
`--max-concurrency SLOTS --max-queue 0`, so that the fleet holds WORKERS x
SLOTS requests and refuses the rest, and daphne portals in front (two sharing
the queue in Redis with --redis-url, one in-process queue otherwise). The
same burst of streaming chats is sent twice: with the model's queue_timeout
at 30 s (the default) and at 0 (no queue: a full fleet answers 503 at once).
Printed per mode: requests served, refused (503), TTFT p50/p95/max, the
burst's wall time. Target: 0 refused inside the timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.gateway_overhead import environment, manage  # noqa: E402
from tests.portal_process import PortalProcess, free_port  # noqa: E402
from tests.processes import start_worker  # noqa: E402

MODEL = "burst"


async def one(client: httpx2.AsyncClient, url: str, body: dict, headers: dict) -> tuple[int, float | None]:
    started = time.perf_counter()
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, None
        ttft, done, failed = None, False, False
        async for line in response.aiter_lines():
            if ttft is None and line.startswith("data:") and '"content"' in line:
                ttft = (time.perf_counter() - started) * 1000
            failed = failed or line.startswith('data: {"error"')
            done = done or line == "data: [DONE]"
        # A stream cut short (an error event, no [DONE]) is not a request served.
        return (200 if done and not failed else 0), ttft


async def burst(
    urls: list[str], body: dict, headers: dict, total: int
) -> tuple[list[tuple[int, float | None]], float]:
    limits = httpx2.Limits(max_connections=total, max_keepalive_connections=total)
    async with httpx2.AsyncClient(timeout=120, limits=limits) as client:
        for url in urls:  # warm each portal's connections and code paths
            await one(client, url, body, headers)
        started = time.perf_counter()
        results = await asyncio.gather(
            *[one(client, urls[i % len(urls)], body, headers) for i in range(total)]
        )
        return list(results), time.perf_counter() - started


def set_queue_timeout(env: dict[str, str], seconds: float) -> None:
    # save() (not update()) so that the registry version moves and every portal sees it within a second.
    code = (
        "from registry.models import ServedModel\n"
        f"for m in ServedModel.objects.filter(name='{MODEL}'):\n"
        f"    m.queue_timeout = {seconds}\n"
        "    m.save()"
    )
    manage(env, "shell", "-c", code)


def pct(values: list[float], q: float) -> float:
    data = sorted(values)
    return data[min(len(data) - 1, int(q * len(data)))] if data else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--slots", type=int, default=4, help="--max-concurrency of each worker")
    parser.add_argument("--burst-factor", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--canned-token-delay", type=float, default=0.02)
    parser.add_argument("--redis-url", default="", help="Share the queue between two portals in this Redis.")
    args = parser.parse_args()
    capacity = args.workers * args.slots
    total = args.burst_factor * capacity
    with tempfile.TemporaryDirectory(prefix="queue-bench-") as tmp, contextlib.ExitStack() as stack:
        env = environment(tmp)
        env["QUEUE_MAX_PER_CALLER"] = str(total)  # one key stands for many users here
        if args.redis_url:
            env["REDIS_URL"] = args.redis_url
        manage(env, "migrate", "--noinput")
        worker_args = ["--model-path", "canned", "--backend", "canned", "--model-names", MODEL,
                       "--max-concurrency", str(args.slots), "--max-queue", "0", "--heartbeat-interval", "1",
                       "--canned-token-delay", str(args.canned_token_delay)]  # fmt: skip
        for _ in range(args.workers):
            stack.enter_context(start_worker(*worker_args, env=env, timeout=120))
        portals = [PortalProcess(free_port(), env) for _ in range(2 if args.redis_url else 1)]
        for portal in portals:
            stack.callback(portal.stop)
            portal.wait_ready(60)
        secret = manage(env, "createapikey", "--name", "burst")
        headers = {"Authorization": f"Bearer {secret}"}
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Tell me a story."}],
            "max_tokens": args.max_tokens,
            "ignore_eos": True,
            "stream": True,
        }
        urls = [f"{p.url}/v1/chat/completions" for p in portals]
        one_request = args.max_tokens * args.canned_token_delay
        print(
            f"fleet: {args.workers} workers x {args.slots} slots = {capacity}; "
            f"burst of {total} streaming chats of {args.max_tokens} tokens (~{one_request:.2f} s each) "
            f"through {len(portals)} portal(s)" + (" sharing the queue in Redis" if args.redis_url else "")
        )
        header = ("queue", "served", "503", "other", "TTFT p50", "p95", "max", "wall")
        print("{:>10} {:>7} {:>5} {:>6} {:>10} {:>9} {:>9} {:>7}".format(*header))
        for label, timeout in (("30 s", 30.0), ("off (0 s)", 0.0)):
            set_queue_timeout(env, timeout)
            time.sleep(2.5)  # the registry version check (1 s) and the worker cache (1 s)
            results, wall = asyncio.run(burst(urls, body, headers, total))
            ttfts = [t for status, t in results if status == 200 and t is not None]
            served = sum(1 for status, _ in results if status == 200)
            refused = sum(1 for status, _ in results if status == 503)
            other = len(results) - served - refused  # cut short, or another status
            print(
                f"{label:>10} {served:>7} {refused:>5} {other:>6} {pct(ttfts, 0.5):>8.0f}ms "
                f"{pct(ttfts, 0.95):>7.0f}ms {max(ttfts, default=float('nan')):>7.0f}ms {wall:>6.2f}s"
            )


if __name__ == "__main__":
    main()
