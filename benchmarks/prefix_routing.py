"""Prefix reuse on SmolLM2: one worker's cache, then routing conversations to the worker that holds them.

    python benchmarks/prefix_routing.py [--part engine|routing|both] [--engines transformers,llamacpp]

engine: one worker per engine, straight (no portal). A prompt of about
--prefix-tokens tokens with a new 20-token suffix, cold (a prefix never seen)
and warm (a prefix sent before, another suffix), `max_tokens` 1, streamed:
time to the first token of each, and warm / cold. With --prefix-cache-mb 0 as
the control (the engine recomputes every prompt).

routing: a daphne portal and two workers of one engine (each in turn). 8
closed-loop conversations, each with its own system prompt of about
--system-tokens tokens, --turns turns; then the same with one system prompt
shared by all 8 (skew). For `least_inflight` and `cache_aware`: TTFT p50/p90
of the follow-up turns, output tokens/s, the workers' prefix-cache hit rate
and how the requests split between the two workers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
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

WORDS = [
    "harbour",
    "morning",
    "market",
    "baker",
    "shutters",
    "gulls",
    "nets",
    "river",
    "bridge",
    "lantern",
    "quiet",
    "street",
    "window",
    "garden",
    "orchard",
    "ladder",
    "basket",
    "copper",
    "kettle",
    "meadow",
    "candle",
    "library",
    "ledger",
    "archive",
    "tide",
    "compass",
    "anchor",
    "sail",
    "rope",
    "island",
    "valley",
    "mountain",
    "winter",
    "summer",
    "autumn",
    "spring",
    "orchard",
]


ROUTING_HEADER = (
    "\n| engine | prompts | policy | follow-up TTFT p50 | p90 | tok/s | hit rate | split | routes: prefix / "
    "none / busier | failed |\n|---|---|---|---|---|---|---|---|---|---|"
)


def text_of(words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))


def worker_args(engine: str, name: str, *extra: str) -> list[str]:
    return [
        "--model-path", "smollm2-135m-instruct", "--model-names", name, "--backend", engine,
        "--device", "cpu", "--max-concurrency", "8", *extra,
    ]  # fmt: skip


async def first_token(client: httpx2.AsyncClient, url: str, body: dict, headers: dict) -> tuple[float, dict]:
    """Seconds to the first streamed token, and the final usage."""
    started, ttft = time.perf_counter(), None
    usage: dict = {}
    async with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            if ttft is None and ('"text"' in line or '"content"' in line):
                ttft = time.perf_counter() - started
            if '"usage"' in line:
                usage = json.loads(line[5:]).get("usage") or usage
    return (ttft or time.perf_counter() - started), usage


# -- engine -------------------------------------------------------------------------------------


async def engine_part(engine: str, prefix_words: int, env: dict[str, str], cache_mb: str) -> dict:
    with start_worker(
        *worker_args(engine, "smol", "--no-register", "--prefix-cache-mb", cache_mb), env=env, timeout=300
    ) as w:
        url = f"{w.address}/v1/completions"
        cold, warm, cached = [], [], []
        async with httpx2.AsyncClient(timeout=600) as client:
            await first_token(
                client, url, {"model": "smol", "prompt": "Hello", "max_tokens": 1, "stream": True}, {}
            )
            for trial in range(3):
                prefix = text_of(prefix_words, seed=1000 + trial)
                body = {
                    "model": "smol",
                    "max_tokens": 1,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                seconds, usage = await first_token(
                    client, url, {**body, "prompt": prefix + text_of(15, trial)}, {}
                )
                cold.append(seconds)
                seconds, usage = await first_token(
                    client, url, {**body, "prompt": prefix + text_of(15, 50 + trial)}, {}
                )
                warm.append(seconds)
                cached.append((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))
                prompt_tokens = usage.get("prompt_tokens", 0)
    return {
        "cold": statistics.median(cold),
        "warm": statistics.median(warm),
        "cached": statistics.median(cached),
        "prompt": prompt_tokens,
    }


# -- routing ------------------------------------------------------------------------------------


@dataclass
class Run:
    follow_ttft: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    failed: int = 0


async def conversation(client, url, headers, system: str, turns: int, seed: int, run: Run) -> None:
    messages = [{"role": "system", "content": system}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"Question {turn}: {text_of(12, seed * 100 + turn)}?"})
        body = {
            "model": "smol", "messages": messages, "max_tokens": 24, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True},
        }  # fmt: skip
        try:
            seconds, usage = await first_token(client, url, body, headers)
        except (RuntimeError, httpx2.HTTPError):
            run.failed += 1
            return
        if turn:
            run.follow_ttft.append(seconds)
        run.tokens += usage.get("completion_tokens", 0)
        messages.append({"role": "assistant", "content": f"Answer {turn}."})


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))] if ordered else float("nan")
    )


async def routing_run(portal, workers, policy: str, shared: bool, system_words: int, turns: int, env) -> dict:
    # save(), not update(): the portals hear of the change through the registry's version.
    manage(
        env,
        "shell",
        "-c",
        "from registry.models import ServedModel; m = ServedModel.objects.get(name='smol'); "
        f"m.dispatch_policy = '{policy}'; m.save()",
    )
    name = f"bench-{workers[0].args[workers[0].args.index('--backend') + 1]}-{policy}-{shared}"
    key = manage(env, "createapikey", "--name", name)
    await asyncio.sleep(6)  # another process's change reaches the portal's cached model within its TTL
    headers = {"Authorization": f"Bearer {key.split()[-1]}"}
    before = await statuses(workers)
    run = Run()
    started = time.perf_counter()
    async with httpx2.AsyncClient(timeout=600) as client:
        seeds = range(8) if not shared else [0] * 8
        systems = [
            text_of(
                system_words, seed=(7 if shared else 0) + 31 * s + 10_000 * int(shared) + hash(policy) % 997
            )
            for s in seeds
        ]
        await asyncio.gather(
            *(
                conversation(client, f"{portal.url}/v1/chat/completions", headers, systems[i], turns, i, run)
                for i in range(8)
            )
        )
    run.seconds = time.perf_counter() - started
    after = await statuses(workers)
    served = [a["served"] - b["served"] for a, b in zip(after, before, strict=True)]
    prompt = sum(a["prompt"] - b["prompt"] for a, b in zip(after, before, strict=True))
    cached = sum(a["cached"] - b["cached"] for a, b in zip(after, before, strict=True))
    return {
        "p50": percentile(run.follow_ttft, 0.5),
        "p90": percentile(run.follow_ttft, 0.9),
        "tok_s": run.tokens / run.seconds,
        "hit": cached / prompt if prompt else 0.0,
        "split": served,
        "failed": run.failed,
        "routes": routes(env, name),
    }


def routes(env: dict[str, str], key_name: str) -> str:
    """How the cache-aware policy chose, from the run's usage records: prefix hits / no match / busier."""
    time.sleep(6)  # the portal writes its usage records within a few seconds
    return manage(
        env,
        "shell",
        "-c",
        "from registry.models import UsageRecord as U; "
        f"r = list(U.objects.filter(api_key__name='{key_name}').values_list('route', flat=True)); "
        "print(sum(x.startswith('prefix') for x in r), '/', sum('no prefix' in x for x in r), '/', "
        "sum('busier' in x for x in r))",
    )


async def statuses(workers) -> list[dict]:
    async with httpx2.AsyncClient(timeout=30) as client:
        found = []
        for w in workers:
            text = (await client.get(f"{w.address}/metrics")).text
            figures: dict[str, float] = {}
            for line in text.splitlines():
                for name, key in (
                    ("worker_generation_requests_total", "served"),
                    ("worker_prompt_tokens_total", "prompt"),
                    ("worker_prompt_tokens_cached_total", "cached"),
                ):
                    if line.startswith(name + "{"):
                        figures[key] = float(line.rsplit(" ", 1)[1])
            found.append(figures)
        return found


async def routing_part(engine: str, args: argparse.Namespace, tmp: str) -> list[tuple[str, str, dict]]:
    env = environment(tmp)
    manage(env, "migrate", "--no-input")
    rows = []
    first = start_worker(*worker_args(engine, "smol", "--worker-id", "w1"), env=env, timeout=300)
    second = start_worker(*worker_args(engine, "smol", "--worker-id", "w2"), env=env, timeout=300)
    with first, second, PortalProcess(free_port(), env) as portal:
        for shared in [p == "shared" for p in args.prompts.split(",")]:
            for policy in ("least_inflight", "cache_aware"):
                figures = await routing_run(
                    portal, [first, second], policy, shared, args.system_words, args.turns, env
                )
                rows.append(("shared" if shared else "distinct", policy, figures))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["engine", "routing", "both"], default="both")
    parser.add_argument("--engines", default="transformers,llamacpp")
    parser.add_argument("--prefix-words", type=int, default=1400, help="about 1,500 tokens")
    parser.add_argument("--system-words", type=int, default=1120, help="about 1,200 tokens")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument(
        "--prompts", default="distinct,shared", help="routing loads: distinct, shared or both"
    )
    args = parser.parse_args()
    engines = args.engines.split(",")
    with tempfile.TemporaryDirectory(prefix="prefix-bench-") as tmp:
        env = environment(tmp)
        if args.part in ("engine", "both"):
            print("| engine | prompt tokens | cache | cold TTFT | warm TTFT | warm / cold | cached tokens |")
            print("|---|---|---|---|---|---|---|")
            for engine in engines:
                for cache_mb in ("512", "0"):
                    r = asyncio.run(engine_part(engine, args.prefix_words, env, cache_mb))
                    print(
                        f"| {engine} | {r['prompt']} | {cache_mb} MiB | {r['cold'] * 1000:.0f} ms | "
                        f"{r['warm'] * 1000:.0f} ms | {r['warm'] / r['cold']:.2f} | {r['cached']:.0f} |",
                        flush=True,
                    )
        if args.part in ("routing", "both"):
            print(ROUTING_HEADER)
            for engine in engines:
                for prompts, policy, f in asyncio.run(routing_part(engine, args, tmp)):
                    print(
                        f"| {engine} | {prompts} | {policy} | {f['p50'] * 1000:.0f} ms | "
                        f"{f['p90'] * 1000:.0f} ms | {f['tok_s']:.1f} | {f['hit']:.0%} | "
                        f"{f['split'][0]:.0f} / {f['split'][1]:.0f} | {f['routes']} | {f['failed']} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
