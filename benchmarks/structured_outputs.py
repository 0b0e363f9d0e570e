"""Measure what JSON-schema constraints cost the transformers engine's batch, in one run.

At concurrency 16, every request constrained by a JSON schema from the test
corpus (tests/inference/json_schemas.py), then the same load unconstrained:
the same prompts, each asking for exactly as many tokens as its constrained
twin produced (ignore_eos), so the batch holds the same rows for the same
steps and only the masks differ. Grammars compile inside the timed run (the
llguidance tokenizer is built in the warm-up). Prints both aggregate
tokens/s and their ratio; the target is constrained at most 15% slower.
It also prints the CPU time the process spent per token, which other
processes' load on the machine disturbs less than wall time.

    python benchmarks/structured_outputs.py [--concurrency 16] [--rounds 2] [--temperature 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from worker_throughput import cache_dir  # the deployment's model cache (a sibling script)

ROOT = Path(__file__).resolve().parent.parent
MAX_TOKENS = 160


async def run_load(engine, prompts, params_list, tag: str) -> tuple[list[int], float, float]:
    """Run one request per (prompt, params) at once; return each one's tokens, the wall and the CPU time."""
    from inference.engines.base import GenerationRequest

    async def one(i: int) -> int:
        request = GenerationRequest(f"{tag}-{i}", prompts[i], params_list[i])
        deltas = [d async for d in engine.generate(request)]
        return deltas[-1].usage.completion_tokens if deltas[-1].usage else 0

    started, cpu = time.perf_counter(), time.process_time()
    counts = await asyncio.gather(*(one(i) for i in range(len(prompts))))
    return list(counts), time.perf_counter() - started, time.process_time() - cpu


async def measure(model: str, concurrency: int, rounds: int, temperature: float) -> None:
    from inference.engines import create_engine
    from inference.engines.base import EngineConfig
    from inference.sampling import Guide, SamplingParams
    from tests.inference.json_schemas import SCHEMAS

    config = EngineConfig(model, device="cpu", max_concurrency=concurrency, cache_dir=str(cache_dir()))
    engine = create_engine(config, backend="transformers")
    await engine.start()
    cases = [SCHEMAS[i % len(SCHEMAS)] for i in range(concurrency)]
    prompts = [
        engine.tokenize(engine.render_chat([{"role": "user", "content": f"{prompt} Answer in JSON."}]))
        for _, prompt, _ in cases
    ]
    warm = SamplingParams(max_tokens=8, temperature=temperature, guide=Guide("json_object", ""))
    await run_load(engine, prompts[:1], [warm], "warm-up")  # builds llguidance's tokenizer
    totals = {"constrained": [0.0, 0.0, 0.0], "unconstrained": [0.0, 0.0, 0.0]}  # tokens, wall s, CPU s
    for r in range(rounds):
        # A fresh spec per round, so every round compiles its grammars inside the timing.
        guided = [
            SamplingParams(
                max_tokens=MAX_TOKENS,
                temperature=temperature,
                seed=i,
                guide=Guide("json_schema", json.dumps({**schema, "$comment": f"round {r}"})),
            )
            for i, (_, _, schema) in enumerate(cases)
        ]
        counts, *constrained = await run_load(engine, prompts, guided, f"c{r}")
        free = [
            SamplingParams(max_tokens=n, temperature=temperature, seed=i, ignore_eos=True)
            for i, n in enumerate(counts)
        ]
        free_counts, *unconstrained = await run_load(engine, prompts, free, f"u{r}")
        assert free_counts == counts, (free_counts, counts)
        for name, (wall, cpu) in (("constrained", constrained), ("unconstrained", unconstrained)):
            tokens = sum(counts)
            totals[name] = [totals[name][0] + tokens, totals[name][1] + wall, totals[name][2] + cpu]
            print(f"round {r} {name:>13}: {tokens} tokens in {wall:.2f} s, {tokens / wall:.1f} tok/s")
    await engine.shutdown()
    rate = {name: tokens / wall for name, (tokens, wall, _) in totals.items()}
    cost = {name: cpu * 1000 / tokens for name, (tokens, _, cpu) in totals.items()}
    print(f"concurrency {concurrency}, temperature {temperature}, {rounds} round(s)")
    for name in totals:
        print(f"{name:>13}: {rate[name]:.1f} tok/s, {cost[name]:.1f} CPU ms/token")
    ratio = rate["constrained"] / rate["unconstrained"]
    print(f"ratio constrained/unconstrained: {ratio:.3f} ({(1 - ratio) * 100:.1f}% slower; target <= 15%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # run as a script: make the project (and the test corpus) importable
    asyncio.run(measure(args.model, args.concurrency, args.rounds, args.temperature))


if __name__ == "__main__":
    main()
