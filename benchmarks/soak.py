"""Soak workers with a steady mix for N minutes; print each process's resident memory every minute.

Starts a llama.cpp SmolLM2 worker and a MiniLM embedding worker (`runworker`,
no portal), then `--clients` closed-loop users send a steady mix: 80%
streamed chat, 10% plain chat, 10% embeddings, each question from a rotating
list so that prompts repeat the way a chat's do. Every minute it prints the
requests that succeeded and failed in that minute and each worker's resident
memory (VmRSS, MiB); at the end, the growth over the run and over its last
half, which is what "flat" is judged on.

    python benchmarks/soak.py [--minutes 60] [--clients 12] [--threads 1]
        [--worker-args "--prefix-cache-mb 128"]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the project importable

from benchmarks.worker_throughput import LIMITS, QUESTIONS, TOKEN, rss_mib  # noqa: E402


@contextmanager
def worker(model: str, extra: list[str]) -> Iterator[tuple[str, int]]:
    """A `runworker` process until the block ends: its URL and pid."""
    command = [sys.executable, "manage.py", "runworker", "--model-path", model, "--model-names", model,
               "--port", "0", "--no-register", *extra]  # fmt: skip
    env = {
        **os.environ,
        "SECRET_KEY": "benchmark-only-secret-key",
        "HF_HUB_OFFLINE": "1",
        "WORKER_TOKEN": TOKEN,
    }
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("Engine: "):
                print(f"  {model}: {line.strip()}")
            if line.startswith("WORKER READY "):
                threading.Thread(target=proc.stdout.read, daemon=True).start()  # never let its pipe fill
                yield line.split()[-1].rstrip("/"), proc.pid
                break
        else:
            raise RuntimeError(f"{model} exited with status {proc.wait()} before it was ready.")
    finally:
        proc.terminate()
        proc.wait(60)


async def one(client: httpx2.AsyncClient, chat: str, embed: str, rng: random.Random) -> bool:
    """One request of the mix; True if it was answered in full with 200."""
    roll = rng.random()
    question = rng.choice(QUESTIONS)
    if roll < 0.1:
        embedding = {"model": "all-minilm-l6-v2", "input": [question]}
        return (await client.post(f"{embed}/v1/embeddings", json=embedding)).status_code == 200
    body: dict[str, Any] = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": question}],
    }
    body |= {"max_tokens": 48, "temperature": 0.7}
    if roll < 0.2:
        return (await client.post(f"{chat}/v1/chat/completions", json=body)).status_code == 200
    async with client.stream("POST", f"{chat}/v1/chat/completions", json=body | {"stream": True}) as answer:
        lines = [line async for line in answer.aiter_lines()]
        return answer.status_code == 200 and "data: [DONE]" in lines


async def soak(
    chat: str, embed: str, pids: dict[str, int], args: argparse.Namespace
) -> list[dict[str, float]]:
    counts: Counter[str] = Counter()
    stop = time.monotonic() + args.minutes * 60
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def user(index: int, client: httpx2.AsyncClient) -> None:
        rng = random.Random(index)
        while time.monotonic() < stop:
            try:
                counts["ok" if await one(client, chat, embed, rng) else "failed"] += 1
            except httpx2.HTTPError:
                counts["failed"] += 1

    samples = [{name: rss_mib(pid) for name, pid in pids.items()}]
    print(f"{'minute':>6} {'ok':>6} {'failed':>6} " + " ".join(f"{name + ' MiB':>22}" for name in pids))
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(300.0), limits=LIMITS, headers=headers) as client:
        users = [asyncio.create_task(user(i, client)) for i in range(args.clients)]
        for minute in range(1, args.minutes + 1):
            await asyncio.sleep(max(0.0, stop - (args.minutes - minute) * 60 - time.monotonic()))
            samples.append({name: rss_mib(pid) for name, pid in pids.items()})
            ok, failed = counts.pop("ok", 0), counts.pop("failed", 0)
            print(f"{minute:>6} {ok:>6} {failed:>6} " + " ".join(f"{samples[-1][n]:>22.1f}" for n in pids))
        await asyncio.gather(*users)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--clients", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads of each worker.")
    parser.add_argument("--worker-args", default="", help="More runworker options for the chat worker.")
    args = parser.parse_args()
    chat_args = ["--backend", "llamacpp", "--threads", str(args.threads), "--max-concurrency", "8"]
    with ExitStack() as stack:
        chat, chat_pid = stack.enter_context(
            worker("smollm2-135m-instruct", chat_args + shlex.split(args.worker_args))
        )
        embed, embed_pid = stack.enter_context(worker("all-minilm-l6-v2", ["--max-concurrency", "4"]))
        pids = {"llama.cpp SmolLM2": chat_pid, "MiniLM": embed_pid}
        samples = asyncio.run(soak(chat, embed, pids, args))
    half = samples[len(samples) // 2]
    for name in pids:
        print(
            f"{name}: {samples[-1][name] - samples[0][name]:+.1f} MiB over the run, "
            f"{samples[-1][name] - half[name]:+.1f} MiB over its last half"
        )


if __name__ == "__main__":
    main()
