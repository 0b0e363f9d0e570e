"""Measure what the portal adds on top of a worker: streamed TTFT and throughput, portal vs direct.

    python benchmarks/gateway_overhead.py [--levels 1,16,64] [--requests-per-level 64]
                                          [--max-tokens 32] [--skip-smollm2] [--backend llamacpp]

In one run: a scratch SQLite database, a worker, a daphne portal in front of it;
each concurrency level streams the same chat requests to the worker directly
and through the portal. Two engines: the canned-token engine (a named fake,
no model: isolates the gateway's own cost) and SmolLM2-135M on the CPU
(llama.cpp unless `--backend` says otherwise).
Beside them, a bare relay (`benchmarks/bare_relay.py`: daphne and the portal's
pooled client, httpx2 on aiohttp, nothing else), the floor of any relay on this stack.
Reported: added TTFT p50/p95 (portal − direct), the bare relay's added p50,
throughput ratios portal ÷ direct and bare ÷ direct, the CPU each relay
process spent a request (its threads' schedstat: steadier than the ratios), for arrivals spread
over time (independent users) and in synchronized waves. The client, the
relays and the worker share the machine's cores: at high concurrency the
ratios measure how much CPU a relay takes from the others as much as its
latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.worker_throughput import cpu_seconds  # noqa: E402
from tests.portal_process import PortalProcess, free_port  # noqa: E402
from tests.processes import start_worker  # noqa: E402


@dataclass
class Run:
    ttft_ms: list[float]
    tokens: int
    seconds: float

    def pct(self, q: float) -> float:
        data = sorted(self.ttft_ms)
        return data[min(len(data) - 1, int(q * len(data)))]

    @property
    def throughput(self) -> float:
        return self.tokens / self.seconds


async def _one(client: httpx2.AsyncClient, url: str, body: dict, headers: dict) -> tuple[float, int]:
    started = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", url, json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data:") and '"content"' in line:
                tokens += 1
                if ttft is None:
                    ttft = (time.perf_counter() - started) * 1000
    return ttft or 0.0, tokens


async def measure(
    url: str, body: dict, headers: dict, concurrency: int, total: int, spread: float = 0.0
) -> Run:
    """Send `total` streaming requests from `concurrency` clients, each sending one after another.

    With `spread` > 0 client i starts i × spread / concurrency seconds late, so arrivals are
    spread over time as independent users' are; with 0 all start at once and, since every
    request takes as long, they keep arriving in synchronized waves (the worst case).
    """
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(timeout=300, limits=limits) as client:
        await _one(client, url, body, headers)  # warm the connection and the code paths
        remaining = iter(range(total))
        results: list[tuple[float, int]] = []

        async def user(index: int) -> None:
            await asyncio.sleep(index * spread / concurrency)
            for _ in remaining:
                results.append(await _one(client, url, body, headers))

        started = time.perf_counter()
        await asyncio.gather(*[user(i) for i in range(concurrency)])
        elapsed = time.perf_counter() - started
    return Run([r[0] for r in results], sum(r[1] for r in results), elapsed)


def measure_cpu(
    pid: int, url: str, body: dict, headers: dict, level: int, total: int, spread: float
) -> tuple[Run, float]:
    """`measure`, and the CPU process `pid` spent on it, in ms a request."""
    before = cpu_seconds(pid)[1]
    run = asyncio.run(measure(url, body, headers, level, total, spread))
    return run, (cpu_seconds(pid)[1] - before) * 1000 / total


def environment(tmp: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="portal.settings",
        SECRET_KEY=env.get("SECRET_KEY", "benchmark-secret"),
        PORTAL_VAR_DIR=tmp,
        DATABASE_URL=f"sqlite:///{tmp}/bench.sqlite3",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.pop("REDIS_URL", None)
    return env


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def start_bare_relay(env: dict[str, str], upstream: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "daphne",
        "-b",
        "127.0.0.1",
        "-p",
        str(port),
        "benchmarks.bare_relay:app",
    ]
    process = subprocess.Popen(  # no access log
        command,
        cwd=REPO,
        env={**env, "UPSTREAM": upstream},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx2.get(f"{url}/ready", timeout=1)
            return process, url
        except httpx2.HTTPError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the bare relay did not start") from None
            time.sleep(0.2)


def bench_engine(label: str, worker_args: list[str], env: dict[str, str], args: argparse.Namespace) -> None:
    name = worker_args[worker_args.index("--model-names") + 1]
    with start_worker(*worker_args, env=env, timeout=300) as worker:
        portal = PortalProcess(free_port(), env)
        portal.wait_ready(60)
        bare, bare_url = start_bare_relay(env, worker.address)
        try:
            # Limits far above the load: the rate-limit path runs on every request, as in production.
            limits = ("--rpm", "1000000", "--tpm", "1000000000")
            secret = manage(env, "createapikey", "--name", f"bench-{label}", *limits)
            body = {
                "model": name,
                "messages": [{"role": "user", "content": "Tell me a story."}],
                "max_tokens": args.max_tokens,
                "ignore_eos": True,
                "stream": True,
            }
            auth = {"Authorization": f"Bearer {secret}"}
            single = asyncio.run(measure(f"{worker.address}/v1/chat/completions", body, {}, 1, 4))
            spread = single.seconds / 4  # one request's duration: arrivals spread over it
            print(f"\n== {label}: {args.max_tokens} tokens per request")
            header = ("arrivals", "c", "direct p50", "portal p50", "added p50", "added p95", "ratio",
                      "cpu/req", "bare added p50", "bare ratio", "bare cpu/req")  # fmt: skip
            print("{:>8} {:>3} {:>11} {:>11} {:>10} {:>10} {:>6} {:>8} {:>15} {:>10} {:>12}".format(*header))
            for level in args.levels:
                total = max(4 * level, args.requests_per_level)  # each client sends 4 or more
                for arrivals, offset in (("spread", spread), ("waves", 0.0)):
                    if level == 1 and arrivals == "waves":
                        continue
                    direct = asyncio.run(
                        measure(f"{worker.address}/v1/chat/completions", body, {}, level, total, offset)
                    )
                    relayed, cpu = measure_cpu(
                        portal.proc.pid, f"{portal.url}/v1/chat/completions", body, auth, level, total, offset
                    )
                    floor, bare_cpu = measure_cpu(
                        bare.pid, f"{bare_url}/v1/chat/completions", body, {}, level, total, offset
                    )
                    added50 = relayed.pct(0.5) - direct.pct(0.5)
                    added95 = relayed.pct(0.95) - direct.pct(0.95)
                    ratio = relayed.throughput / direct.throughput
                    print(
                        f"{arrivals:>8} {level:>3} {direct.pct(0.5):>9.1f}ms {relayed.pct(0.5):>9.1f}ms "
                        f"{added50:>8.1f}ms {added95:>8.1f}ms {ratio:>6.3f} {cpu:>6.1f}ms "
                        f"{floor.pct(0.5) - direct.pct(0.5):>13.1f}ms "
                        f"{floor.throughput / direct.throughput:>10.3f} {bare_cpu:>10.1f}ms",
                        flush=True,
                    )
        finally:
            bare.terminate()
            bare.wait(10)
            portal.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,16,64", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--requests-per-level", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--canned-token-delay", type=float, default=0.01)
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--backend", default="llamacpp", help="The SmolLM2 worker's engine.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        env = environment(tmp)
        manage(env, "migrate", "--noinput")
        canned = ["--model-path", "canned", "--backend", "canned", "--model-names", "canned-bench",
                  "--max-concurrency", "64", "--max-queue", "256",
                  "--canned-token-delay", str(args.canned_token_delay)]  # fmt: skip
        bench_engine("canned engine (fake, no model)", canned, env, args)
        if not args.skip_smollm2:
            smol = ["--model-path", "smollm2-135m-instruct", "--model-names", "smollm2-bench",
                    "--max-concurrency", "16", "--max-queue", "256", "--backend", args.backend]  # fmt: skip
            bench_engine(f"SmolLM2-135M-Instruct ({args.backend}, CPU)", smol, env, args)


if __name__ == "__main__":
    main()
