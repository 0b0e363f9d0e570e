"""Measure workers' output tokens/s and TTFT at concurrency 1, 4 and 16, engines side by side.

In one run, for each server in `--servers`, starts it on the packaged SmolLM2
and drives it with closed-loop users: each of `c` users streams a chat
request, waits for the answer, and sends the next (`--rounds` each). Printed
per level: tokens/s (completion tokens the server reports ÷ wall time), TTFT
p50/p95, the median time per output token, and the server process's CPU a
token (Linux): its main thread's (our worker's event loop) and all its threads'.
Per server also: how long it took from its start to answering /health, and its
resident memory after its first answer (model files cached: a first start converts).

    python benchmarks/worker_throughput.py [--servers llamacpp llama.cpp-server ...]
        [--levels 1 4 16] [--mode natural|fixed] [--tokens 64] [--rounds 3]
    python benchmarks/worker_throughput.py --in-process   # ours vs transformers' own batching

Servers: `llamacpp`, `transformers-float32`, `transformers-bfloat16` are our
worker (`runworker --backend …`); `llamacpp` runs the llama.cpp build a worker
loads here (LLAMACPP_NATIVE as set), `llamacpp-native` the native build
(`manage.py build_llamacpp` first), `llamacpp-portable` the portable wheel. `llama.cpp-server` is
xllamacpp's own llama.cpp HTTP server (portable wheel) with the same float16
GGUF, slots and threads and no worker around it, which shows what the worker
itself costs; `llama.cpp-server-native` is the `llama-server` binary of the
native build (same source, same CMake options), what a CPU user would run.
Every row prints the build it runs. One random token is sent to every
server (our worker's WORKER_TOKEN, the bare servers' API key).
Modes: `natural` sends different questions as independent users do, answers
end at EOS (up to `--tokens`); `fixed` makes every answer exactly `--tokens`
tokens long (ignore_eos).

`--in-process` skips HTTP and compares our transformers engine with
transformers' built-in continuous batching (`model.generate_batch`). We
serve with ours: transformers' manager has no per-request seed, penalties,
min_p or stop strings, and it was slower here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Here is a long story about a lighthouse keeper and the sea:"
QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "What is 2 + 2?",
    "Say hello in Spanish.",
    "What do bees make?",
    "Give me a word that rhymes with cat.",
    "What is the largest ocean?",
    "How many legs does a spider have?",
    "What is the boiling point of water?",
    "Name a planet in our solar system.",
    "What colour is the sky on a clear day?",
    "Who wrote Romeo and Juliet?",
    "What is the opposite of hot?",
    "Name a fruit that is yellow.",
    "How many days are in a week?",
    "What animal says moo?",
]
SERVERS = (
    "llamacpp",
    "llamacpp-native",
    "llamacpp-portable",
    "llama.cpp-server",
    "llama.cpp-server-native",
    "transformers-float32",
    "transformers-bfloat16",
)
BARE_SERVER = """
import sys, time, xllamacpp
params = xllamacpp.CommonParams()
params.model.path, params.n_parallel = sys.argv[1], int(sys.argv[2])
params.n_ctx, params.kv_unified = 8192, True  # as our engine sets them
params.cpuparams.n_threads = params.cpuparams_batch.n_threads = int(sys.argv[3])
params.api_keys, params.verbosity = [sys.argv[4]], 0
server = xllamacpp.Server(params)
from inference.engines.llamacpp_build import label
print("Engine: xllamacpp server (" + label(xllamacpp.get_system_info(), native=False) + ")", flush=True)
print("LISTENING", server.listening_address, flush=True)
time.sleep(86400)
"""
TOKEN = secrets.token_urlsafe(16)  # every server's key for this run; WORKER_TOKEN set outside is not used
# llama.cpp's HTTP server (cpp-httplib) closes some kept-alive connections after a streamed answer
# without saying so: the next request sent on one failed with "Server disconnected without sending a
# response". Every request opens its own connection (on loopback, well under a millisecond), every row alike.
LIMITS = httpx2.Limits(max_connections=64, max_keepalive_connections=0)


@dataclass
class Answer:
    ttft: float  # seconds to the first content token
    seconds: float
    tokens: int


@contextmanager
def server_process(
    kind: str, model: str, slots: int, threads: int | None = None, timeout: float = 300.0
) -> Iterator[tuple[str, int, float]]:
    """Start one server until the block ends; yield its URL (once it is ready), its pid, its start time."""
    env = {"SECRET_KEY": "benchmark-only-secret-key", "HF_HUB_OFFLINE": "1", "WORKER_TOKEN": TOKEN}
    env["TOKENIZERS_PARALLELISM"] = "false"
    if kind.startswith("llama.cpp-server"):
        command, ready = bare_server_command(kind, model, slots, threads)
    else:
        backend, _, variant = kind.partition("-")
        dtype = "auto" if backend == "llamacpp" else variant
        if variant in ("native", "portable"):
            env["LLAMACPP_NATIVE"] = "on" if variant == "native" else "off"
        command = [sys.executable, "manage.py", "runworker", "--model-path", model, "--port", "0",
                   "--no-register", "--max-concurrency", str(slots), "--backend", backend,
                   "--dtype", dtype or "auto"]  # fmt: skip
        command += ["--threads", str(threads)] if threads else []
        ready = "WORKER READY "
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=None, text=True
    )
    try:
        yield wait_ready(proc, kind, ready, timeout), proc.pid, started  # sh execs llama-server: the same pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_ready(proc: subprocess.Popen[str], kind: str, ready: str, timeout: float) -> str:
    """The server's URL from its ready line; its output is drained from then on, so it never blocks."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Engine: "):
            print(f"  {line.strip()}")
        if line.startswith(ready):
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return line.split()[-1].rstrip("/")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{kind} did not become ready in time.")
    raise RuntimeError(f"{kind} exited with status {proc.wait()} before it was ready.")


def bare_server_command(kind: str, model: str, slots: int, threads: int | None) -> tuple[list[str], str]:
    """A llama.cpp server without our worker: xllamacpp's (portable), or the native build's llama-server."""
    from inference.engines.llamacpp_engine import default_threads
    from inference.loading import gguf_for_llamacpp, packaged_model_path

    gguf = gguf_for_llamacpp(packaged_model_path(model), "auto", cache_dir=cache_dir())
    threads = threads or default_threads()
    if kind == "llama.cpp-server":
        return [sys.executable, "-c", BARE_SERVER, str(gguf), str(slots), str(threads), TOKEN], "LISTENING "
    binary = native_llama_server()
    port = free_port()
    command = [str(binary), "-m", str(gguf), "-np", str(slots), "-c", "8192", "-kvu", "-t", str(threads),
               "-tb", str(threads), "--api-key", TOKEN, "--host", "127.0.0.1", "--port", str(port),
               "--no-webui"]  # fmt: skip
    shell = f'echo "Engine: {binary}"; echo LISTENING http://127.0.0.1:{port}; exec "$@"'
    # llama-server prints nothing on stdout when it is ready: the URL is handed over at once, and
    # `measure` waits for /health before the first request.
    return ["sh", "-c", shell, "llama-server", *command], "LISTENING "


def native_llama_server() -> Path:
    from inference.engines import llamacpp_build
    from portal import env

    folder = llamacpp_build.current_dir(env.LLAMACPP_BUILD_DIR)
    if folder is None or not (folder / "llama-server").is_file():
        raise SystemExit(f"No native llama-server in {folder}: run `python manage.py build_llamacpp` first.")
    return folder / "llama-server"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request_body(mode: str, model: str, tokens: int, question: str) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question if mode == "natural" else PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return body | ({"ignore_eos": True} if mode == "fixed" else {})


async def one_request(client: httpx2.AsyncClient, url: str, body: dict) -> Answer:
    """Stream one chat answer to the end; time its first token and take the usage it reports."""
    started = time.perf_counter()
    ttft, produced = 0.0, 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if not ttft and any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                ttft = time.perf_counter() - started
            if chunk.get("usage"):
                produced = int(chunk["usage"]["completion_tokens"])
    return Answer(ttft, time.perf_counter() - started, produced)


async def capital_of_france(client: httpx2.AsyncClient, url: str, model: str) -> str:
    """The answer to QUESTIONS[0] at temperature 0, which every row should give alike (and say Paris)."""
    body = {"model": model, "messages": [{"role": "user", "content": QUESTIONS[0]}], "temperature": 0}
    body["max_tokens"] = 24
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds so far of process `pid`'s main thread and of all its threads (schedstat: ns)."""
    main, total = 0.0, 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            seconds = int((task / "schedstat").read_text().split()[0]) / 1e9
            total += seconds
            main += seconds if task.name == str(pid) else 0.0
    return main, total


@dataclass
class Level:
    concurrency: int
    seconds: float
    answers: list[Answer]
    cpu: tuple[float, float]  # the server's main thread and whole process, CPU seconds


async def measure(
    url: str, pid: int, launched: float, args: argparse.Namespace
) -> tuple[str, list[Level], str]:
    """The server's answer to QUESTIONS[0] (also its warm-up), each level's `level` closed-loop users,
    and how it started (seconds to its first 200 on /health, resident memory after its first answer)."""
    results = []
    timeout = httpx2.Timeout(600.0, connect=10.0)
    async with httpx2.AsyncClient(timeout=timeout, limits=LIMITS) as client:
        await until_healthy(client, url)
        ready_seconds = time.perf_counter() - launched
        answer = await capital_of_france(client, url, args.model)
        startup = f"ready in {ready_seconds:.1f} s, {rss_mib(pid):.0f} MiB resident after its first answer"
        for level in args.levels:
            started, before = time.perf_counter(), cpu_seconds(pid)
            users = await asyncio.gather(*(user(client, url, args, i, level) for i in range(level)))
            seconds, after = time.perf_counter() - started, cpu_seconds(pid)
            cpu = (after[0] - before[0], after[1] - before[1])
            results.append(Level(level, seconds, [a for answers in users for a in answers], cpu))
    return answer, results, startup


def rss_mib(pid: int) -> float:
    """Process `pid`'s resident memory (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def until_healthy(client: httpx2.AsyncClient, url: str, timeout: float = 300.0) -> None:
    """Wait for /health to answer 200: llama-server listens before its model is loaded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await client.get(f"{url}/health")).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not become healthy in time.")
        await asyncio.sleep(0.2)  # polling a process we do not control: no event to await


async def user(
    client: httpx2.AsyncClient, url: str, args: argparse.Namespace, index: int, level: int
) -> list[Answer]:
    """One closed-loop user: `args.rounds` requests, each sent when the previous answer ended."""
    answers = []
    for round_ in range(args.rounds):
        question = QUESTIONS[(index + round_ * level) % len(QUESTIONS)]
        answers.append(
            await one_request(client, url, request_body(args.mode, args.model, args.tokens, question))
        )
    return answers


def report(kind: str, results: list[Level]) -> dict[int, float]:
    print(kind)
    print(
        f"{'c':>4} {'answers':>8} {'tokens':>7} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p95':>9} {'ms/token':>9}"
        f" {'CPU ms/token: main thread':>26} {'all':>6}"
    )
    rates = {}
    for result in results:
        level, seconds, answers = result.concurrency, result.seconds, result.answers
        tokens = sum(a.tokens for a in answers)
        ttfts = sorted(a.ttft * 1000 for a in answers)
        per_token = [(a.seconds - a.ttft) * 1000 / (a.tokens - 1) for a in answers if a.tokens > 1]
        rates[level] = tokens / seconds
        p95 = ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))]
        per_token_ms = statistics.median(per_token) if per_token else 0.0
        print(
            f"{level:>4} {len(answers):>8} {tokens:>7} {rates[level]:>7.1f} "
            f"{statistics.median(ttfts):>7.0f}ms {p95:>7.0f}ms {per_token_ms:>7.1f}ms"
            f" {result.cpu[0] * 1000 / tokens:>26.3f} {result.cpu[1] * 1000 / tokens:>6.2f}"
        )
    return rates


def report_rates(results: list[tuple[int, int, float]]) -> None:
    print(f"{'concurrency':>11} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    for level, produced, seconds in results:
        print(f"{level:>11} {produced:>7} {seconds:>8.2f} {produced / seconds:>9.1f}")


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

    from inference.loading import resolve_model, weights_folder

    folder = weights_folder(resolve_model(model, cache_dir=cache_dir()), cache_dir=cache_dir())
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
    os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key")
    from portal import env

    return env.MODEL_CACHE_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--mode", choices=("natural", "fixed"), default="natural")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="Requests each user sends, one after another.")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--threads", type=int, help="Model threads of every server (default: its own).")
    parser.add_argument(
        "--in-process", action="store_true", help="Compare transformers engines without HTTP."
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # run as a script: make the project importable
    if args.in_process:
        print("our engine (in process)")
        report_rates(asyncio.run(measure_in_process(args.model, args.levels, args.tokens)))
        print("transformers generate_batch (in process)")
        report_rates(measure_transformers_batching(args.model, args.levels, args.tokens))
        return
    print(f"{args.mode} answers, up to {args.tokens} tokens, {args.rounds} requests per user, temperature 0")
    rates, answers = {}, {}
    for kind in args.servers:
        with server_process(kind, args.model, max(args.levels), args.threads) as (url, pid, launched):
            answers[kind], results, startup = asyncio.run(measure(url, pid, launched, args))
            print(f"  {startup}")
            print(f"  {QUESTIONS[0]} (temperature 0) {answers[kind]!r}")
            rates[kind] = report(kind, results)
    for bare in ("llama.cpp-server", "llama.cpp-server-native"):
        if "llamacpp" in rates and bare in rates:
            ratios = ", ".join(f"c={c}: {rates['llamacpp'][c] / rates[bare][c]:.2f}" for c in args.levels)
            print(f"llamacpp worker ÷ {bare}, tok/s: {ratios}")
    print(f"Same answer at temperature 0 on every row: {'yes' if len(set(answers.values())) == 1 else 'no'}")


if __name__ == "__main__":
    main()
