"""Prefill/decode split on SmolLM2: two `both` workers against one prefill and one decode worker.

    python benchmarks/pd_split.py [--requests 4] [--long-tokens 1000] [--answer-tokens 64] [--threads 1]

In one run: a scratch SQLite database, a daphne portal, and two transformers
workers of SmolLM2-135M (float32, --threads each), first both `--role both`,
then one `--role prefill` and one `--role decode`. The same streaming loads go
through the portal each time:

- long: prompts of --long-tokens tokens or more, answers of 8 tokens;
- short: short prompts, answers of --answer-tokens tokens (ignore_eos);
- mix: the short load starts, then the long one arrives while it decodes; the
  figure that matters is the short requests' inter-token latency (ITL) p95,
  which long prefills sharing their batch stretch.

Printed per setup and load: TTFT p50/p95, ITL p50/p95 (gaps between streamed
chunks), output tokens per second, and the requests that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.gateway_overhead import environment, manage  # noqa: E402
from tests.portal_process import PortalProcess, free_port  # noqa: E402
from tests.processes import start_worker  # noqa: E402

PARAGRAPH = (
    "The harbour town woke slowly: fishermen checked their nets, the baker opened his shutters, "
    "and gulls argued over the first scraps of the morning market. "
)


@dataclass
class Result:
    ttft: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    failed: int = 0


async def stream(client: httpx2.AsyncClient, url: str, body: dict, headers: dict, result: Result) -> None:
    started = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                result.failed += 1
                return
            async for line in response.aiter_lines():
                if not (line.startswith("data:") and '"content"' in line):
                    continue
                now = time.perf_counter()
                if last is None:
                    result.ttft.append(now - started)
                else:
                    result.gaps.append(now - last)
                last = now
                result.tokens += 1
    except httpx2.HTTPError:
        result.failed += 1


def chat(question: str, max_tokens: int) -> dict:
    return {
        "model": "smol",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }


async def run_load(
    url: str, headers: dict, args: argparse.Namespace, load: str
) -> tuple[Result, Result, float]:
    long_prompt = PARAGRAPH * (args.long_tokens // 30 + 1) + "Summarise this story in one sentence."
    long_body, short_body = chat(long_prompt, 8), chat("Tell me a story.", args.answer_tokens)
    long, short = Result(), Result()
    async with httpx2.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        if load == "long":
            await asyncio.gather(
                *(stream(client, url, long_body, headers, long) for _ in range(args.requests))
            )
        elif load == "short":
            await asyncio.gather(
                *(stream(client, url, short_body, headers, short) for _ in range(args.requests))
            )
        else:
            shorts = [
                asyncio.create_task(stream(client, url, short_body, headers, short))
                for _ in range(args.requests)
            ]
            await asyncio.sleep(1.0)  # the short ones are decoding when the long prompts arrive
            await asyncio.gather(
                *(stream(client, url, long_body, headers, long) for _ in range(args.requests))
            )
            await asyncio.gather(*shorts)
        return long, short, time.perf_counter() - started


def pct(values: list[float], q: float) -> str:
    if not values:
        return "—"
    data = sorted(values)
    return f"{1000 * data[min(len(data) - 1, int(q * len(data)))]:.0f}"


def report(setup: str, load: str, part: str, result: Result, wall: float) -> None:
    row = (setup, load, part, pct(result.ttft, 0.5), pct(result.ttft, 0.95), pct(result.gaps, 0.5),
           pct(result.gaps, 0.95), f"{result.tokens / wall:.1f}", str(result.failed))  # fmt: skip
    print("{:<16} {:<6} {:<6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>6}".format(*row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=4, help="Requests of each kind, at once.")
    parser.add_argument("--long-tokens", type=int, default=1000)
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="Threads per worker.")
    args = parser.parse_args()
    header = ("setup", "load", "part", "TTFT p50", "TTFT p95", "ITL p50", "ITL p95", "tok/s", "failed")
    print("{:<16} {:<6} {:<6} {:>9} {:>9} {:>8} {:>8} {:>8} {:>6}".format(*header))
    for setup, roles in (("2 x both", ("both", "both")), ("prefill+decode", ("prefill", "decode"))):
        with tempfile.TemporaryDirectory(prefix="pd-bench-") as tmp, contextlib.ExitStack() as stack:
            env = environment(tmp)
            manage(env, "migrate", "--noinput")
            for role in roles:
                worker = [
                    "--model-path", "smollm2-135m-instruct", "--model-names", "smol",
                    "--backend", "transformers", "--dtype", "float32", "--threads", str(args.threads),
                    "--role", role,
                    "--heartbeat-interval", "1", "--max-concurrency", str(2 * args.requests),
                ]  # fmt: skip
                stack.enter_context(start_worker(*worker, env=env, timeout=300))
            portal = PortalProcess(free_port(), env)
            stack.callback(portal.stop)
            portal.wait_ready(60)
            secret = manage(env, "createapikey", "--name", "pd", "--rpm", "1000000", "--tpm", "1000000000")
            headers = {"Authorization": f"Bearer {secret}"}
            url = f"{portal.url}/v1/chat/completions"
            asyncio.run(
                run_load(url, headers, argparse.Namespace(**{**vars(args), "requests": 1}), "short")
            )  # warm
            for load in ("long", "short", "mix"):
                long, short, wall = asyncio.run(run_load(url, headers, args, load))
                if load != "short":
                    report(setup, load, "long", long, wall)
                if load != "long":
                    report(setup, load, "short", short, wall)


if __name__ == "__main__":
    main()
