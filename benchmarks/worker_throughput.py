"""Measure a worker's aggregate output tokens/s at concurrency 1, 4 and 16.

Starts `manage.py runworker` on the packaged SmolLM2 (or uses `--url` of a
running worker), then at each concurrency level fires that many streaming
/v1/completions requests at once, each asking for exactly `--tokens` tokens
(temperature 0, ignore_eos), and divides the tokens the worker reports in
its usage chunk by the wall time. Batching works when the 16-way figure is
several times the 1-way one.

    python benchmarks/worker_throughput.py [--tokens 64] [--levels 1 4 16] [--url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Here is a long story about a lighthouse keeper and the sea:"


@contextmanager
def worker_process(model: str, max_concurrency: int, timeout: float = 300.0) -> Iterator[str]:
    """Run `runworker` until the block ends; yield its base URL once it prints WORKER READY."""
    env = {"SECRET_KEY": "benchmark-only", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "manage.py",
        "runworker",
        "--model-path",
        model,
        "--port",
        "0",
        "--no-register",
        "--max-concurrency",
        str(max_concurrency),
    ]
    proc = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=None, text=True
    )
    try:
        deadline = time.monotonic() + timeout
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("WORKER READY "):
                yield line.split()[2].rstrip("/")
                break
            if time.monotonic() > deadline:
                raise TimeoutError("The worker did not become ready in time.")
        else:
            raise RuntimeError(f"The worker exited with status {proc.wait()} before it was ready.")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def one_request(client: httpx.AsyncClient, url: str, model: str, tokens: int) -> int:
    """Stream one completion to the end; return the completion tokens the worker reports."""
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    produced = 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            usage = json.loads(line[6:]).get("usage")
            if usage:
                produced = int(usage["completion_tokens"])
    return produced


async def measure(url: str, model: str, levels: list[int], tokens: int) -> list[tuple[int, int, float]]:
    """Return (concurrency, tokens produced, seconds) for each level, after a warm-up request."""
    results = []
    timeout = httpx.Timeout(600.0, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=64)) as client:
        await one_request(client, url, model, 8)
        for level in levels:
            started = time.perf_counter()
            counts = await asyncio.gather(*(one_request(client, url, model, tokens) for _ in range(level)))
            results.append((level, sum(counts), time.perf_counter() - started))
    return results


def report(results: list[tuple[int, int, float]]) -> None:
    print(f"{'concurrency':>11} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    rates = {}
    for level, produced, seconds in results:
        rates[level] = produced / seconds
        print(f"{level:>11} {produced:>7} {seconds:>8.2f} {rates[level]:>9.1f}")
    low, high = min(rates), max(rates)
    if low != high and rates[low] > 0:
        print(f"ratio {high}/{low}: {rates[high] / rates[low]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--url", help="Measure a worker that is already running instead of starting one.")
    args = parser.parse_args()
    if args.url:
        results = asyncio.run(measure(args.url.rstrip("/"), args.model, args.levels, args.tokens))
    else:
        with worker_process(args.model, max(args.levels)) as url:
            results = asyncio.run(measure(url, args.model, args.levels, args.tokens))
    report(results)


if __name__ == "__main__":
    main()
