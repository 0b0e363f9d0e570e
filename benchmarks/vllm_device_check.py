"""Check the vLLM backend on a machine with a CUDA GPU: a chat, a structured answer, an abort.

Run unchanged where a GPU is lent (`device`): it installs vLLM when it is
missing, starts `runworker --backend vllm` on the packaged SmolLM2 (converted
once to a Hugging Face folder, which vLLM loads), with a few of vLLM's serving
knobs, and prints one line per check; it exits 1 if any failed.

    python benchmarks/vllm_device_check.py [--skip-install]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parent.parent
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
}


def install() -> None:
    if importlib.util.find_spec("vllm") is None:
        print("installing vllm (pip install '.[vllm]')...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"{ROOT}[vllm]"], check=True)


def start_worker(log: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "ENV_FILE": "/dev/null", "SECRET_KEY": os.environ.get("SECRET_KEY", "device-check")}
    command = [
        sys.executable, "manage.py", "runworker", "--no-register", "--backend", "vllm", "--device", "cuda",
        "--model-path", "smollm2-135m-instruct", "--served-model-name", "smol", "--max-num-seqs", "8",
        "--max-model-len", "2048", "--gpu-memory-utilization", "0.3", "--enable-prefix-caching",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if line.startswith("WORKER READY "):
                return proc, line.split()[-1]
        time.sleep(2)
    proc.kill()
    raise SystemExit(f"the vLLM worker did not start:\n{log.read_text()[-4000:]}")


def check(name: str, ok: bool, detail: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
    return ok


def run_checks(base: str) -> bool:
    client = httpx2.Client(base_url=base, timeout=120)
    results = []
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "smol", "messages": QUESTION, "temperature": 0, "max_tokens": 20},
    ).json()
    text = chat["choices"][0]["message"]["content"]
    results.append(check("chat", "Paris" in text, repr(text)))

    body = {
        "model": "smol",
        "messages": [{"role": "user", "content": "Where is Paris? Answer in JSON."}],
        "max_tokens": 60,
        "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}},
    }
    answer = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    try:
        parsed = json.loads(answer)
        ok = isinstance(parsed, dict) and set(SCHEMA["required"]) <= set(parsed)
    except ValueError:
        ok = False
    results.append(check("structured output", ok, answer))

    story = {
        "model": "smol",
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    with client.stream("POST", "/v1/chat/completions", json=story) as response:
        request_id = response.headers["X-Request-Id"]
        for line in response.iter_lines():
            if line.startswith("data: {"):
                break
        aborted = client.post(f"/abort/{request_id}").json()
    for _ in range(50):  # the engine frees the sequence on its next step
        status = client.get("/status").json()
        if status["in_flight"] == 0:
            break
        time.sleep(0.1)
    results.append(
        check(
            "abort",
            aborted["aborted"] and status["in_flight"] == 0,
            f"{aborted}, in flight after: {status['in_flight']}",
        )
    )
    return all(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-install", action="store_true")
    args = parser.parse_args()
    if not args.skip_install:
        install()
    log = ROOT / "var" / "vllm-device-check.log"
    log.parent.mkdir(exist_ok=True)
    proc, base = start_worker(log)
    try:
        ok = run_checks(base)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    print(f"worker log: {log}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
