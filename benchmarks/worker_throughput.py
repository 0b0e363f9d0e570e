"""Measure a worker's aggregate output tokens/s at concurrency 1, 4 and 16.

Starts `manage.py runworker` on the packaged SmolLM2 (or uses `--url` of a
running worker), then at each concurrency level fires that many streaming
/v1/completions requests at once, each asking for exactly `--tokens` tokens
(temperature 0, ignore_eos), and divides the tokens the worker reports in
its usage chunk by the wall time. Batching works when the 16-way figure is
several times the 1-way one.

    python benchmarks/worker_throughput.py [--tokens 64] [--levels 1 4 16] [--url URL]
    python benchmarks/worker_throughput.py --in-process   # ours vs transformers' own batching

`--in-process` skips HTTP and compares our engine with transformers'
built-in continuous batching (`model.generate_batch`) on the same workload.
We serve with ours: transformers' manager has no per-request seed,
penalties, min_p or stop strings, and it was slower here.
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

import httpx2

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


async def one_request(client: httpx2.AsyncClient, url: str, model: str, tokens: int) -> int:
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
    timeout = httpx2.Timeout(600.0, connect=10.0)
    async with httpx2.AsyncClient(timeout=timeout, limits=httpx2.Limits(max_connections=64)) as client:
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


async def measure_in_process(model: str, levels: list[int], tokens: int) -> list[tuple[int, int, float]]:
    """Same workload as `measure`, straight into our engine (no HTTP)."""
    from inference.engines import create_engine
    from inference.engines.base import EngineConfig, GenerationRequest
    from inference.sampling import SamplingParams

    config = EngineConfig(model, device="cpu", max_concurrency=max(levels), cache_dir=str(cache_dir()))
    engine = create_engine(config, backend="transformers")
    await engine.start()
    prompt = engine.tokenize(PROMPT)

    async def one(request_id: str, count: int) -> int:
        params = SamplingParams(max_tokens=count, temperature=0, ignore_eos=True)
        deltas = [d async for d in engine.generate(GenerationRequest(request_id, prompt, params))]
        return deltas[-1].usage.completion_tokens if deltas[-1].usage else 0

    await one("warm-up", 8)
    results = []
    for level in levels:
        started = time.perf_counter()
        counts = await asyncio.gather(*(one(f"{level}-{i}", tokens) for i in range(level)))
        results.append((level, sum(counts), time.perf_counter() - started))
    await engine.shutdown()
    return results


def measure_transformers_batching(model: str, levels: list[int], tokens: int) -> list[tuple[int, int, float]]:
    """The same workload through transformers' own continuous batching (`generate_batch`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from inference.loading import resolve_model

    folder = resolve_model(model, cache_dir=cache_dir()).path
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # as our engine does
    tokenizer = AutoTokenizer.from_pretrained(folder)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = tokenizer.encode(PROMPT)
    config = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    lm.generate_batch(inputs=[prompt], generation_config=config, progress_bar=False)  # warm-up
    results = []
    for level in levels:
        started = time.perf_counter()
        outputs = lm.generate_batch(inputs=[prompt] * level, generation_config=config, progress_bar=False)
        produced = sum(len(o.generated_tokens) for o in outputs.values())
        results.append((level, produced, time.perf_counter() - started))
    return results


def cache_dir() -> Path:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    os.environ.setdefault("SECRET_KEY", "benchmark-only")
    from portal import env

    return env.MODEL_CACHE_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--url", help="Measure a worker that is already running instead of starting one.")
    parser.add_argument("--in-process", action="store_true", help="Compare engines without HTTP.")
    args = parser.parse_args()
    if args.in_process:
        sys.path.insert(0, str(ROOT))  # run as a script: make the project importable
        print("our engine (in process)")
        report(asyncio.run(measure_in_process(args.model, args.levels, args.tokens)))
        print("transformers generate_batch (in process)")
        report(measure_transformers_batching(args.model, args.levels, args.tokens))
        return
    if args.url:
        results = asyncio.run(measure(args.url.rstrip("/"), args.model, args.levels, args.tokens))
    else:
        with worker_process(args.model, max(args.levels)) as url:
            results = asyncio.run(measure(url, args.model, args.levels, args.tokens))
    report(results)


if __name__ == "__main__":
    main()
