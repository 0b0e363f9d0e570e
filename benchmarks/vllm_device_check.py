"""Check the vLLM backend on a machine with a CUDA GPU: the paths that were only read, never run.

It needs a Linux x86_64 machine with an NVIDIA GPU and its driver, and pip able
to reach the package index: it installs the project's `vllm` extra (vLLM
brings the torch and transformers it was built for). `--skip-install` where
vLLM is installed already. It
starts `runworker --backend vllm` on the packaged SmolLM2 (converted once to a
Hugging Face folder, which vLLM loads) with a few of vLLM's serving knobs and
no --max-model-len, and prints one line per check; it exits 1 if any failed:
a chat, a structured answer, a bad regex answered 400 naming the field, beam
search, the context length vLLM reports being the model's, an abort, and a
drain that stops vLLM's engine.

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
sys.path.insert(0, str(ROOT))

from inference.loading import gguf_limits, packaged_model_path  # noqa: E402 - after the path

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
    "required": ["city", "country"],
}


def install() -> None:
    """The project with its `vllm` extra, unless vLLM is installed already."""
    if importlib.util.find_spec("vllm") is None:
        print("installing .[vllm]...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"{ROOT}[vllm]"], check=True)


def start_worker(log: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "ENV_FILE": "/dev/null", "SECRET_KEY": os.environ.get("SECRET_KEY", "device-check")}
    command = [
        sys.executable, "manage.py", "runworker", "--no-register", "--backend", "vllm", "--device", "cuda",
        "--model-path", "smollm2-135m-instruct", "--served-model-name", "smol", "--max-num-seqs", "8",
        "--gpu-memory-utilization", "0.3", "--enable-prefix-caching",
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


def check_context_length(client: httpx2.Client) -> bool:
    """vLLM's own context length: the model config's, not the tokenizer's 1e30."""
    expected = gguf_limits(packaged_model_path("smollm2-135m-instruct"))["max_position_embeddings"]
    reported = client.get("/v1/models").json()["data"][0]["max_model_len"]
    return check("max_model_len", reported == expected, f"{reported} (the model's: {expected})")


def check_bad_regex(client: httpx2.Client) -> bool:
    """vLLM refuses the regex (a VLLMClientError since 0.27): a 400 naming the field, not a 500."""
    body = {"model": "smol", "messages": QUESTION, "max_tokens": 8, "guided_regex": "([a-z"}
    response = client.post("/v1/chat/completions", json=body)
    param = response.json().get("error", {}).get("param") if response.status_code == 400 else None
    return check("bad regex", param == "guided_regex", f"{response.status_code} {response.text[:200]}")


def check_beam_search(client: httpx2.Client) -> bool:
    body = {
        "model": "smol",
        "messages": QUESTION,
        "max_tokens": 12,
        "temperature": 0,
        "use_beam_search": True,
        "n": 2,
        "best_of": 3,
    }
    response = client.post("/v1/chat/completions", json=body)
    texts = (
        [c["message"]["content"] for c in response.json().get("choices", [])] if response.is_success else []
    )
    ok = response.status_code == 200 and len(texts) == 2 and all(texts)
    return check("beam search", ok, f"{response.status_code} {texts or response.text[:200]}")


def stop_worker(proc: subprocess.Popen, log: Path) -> bool:
    """SIGTERM drains the worker, which shuts vLLM's engine down (AsyncLLM.shutdown) and exits."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        return check("drain", False, "the worker did not stop within 90 s of SIGTERM")
    failed = "Engine shutdown failed" in log.read_text()
    return check("drain", code == 0 and not failed, f"exit code {code}, engine shutdown failed: {failed}")


def run_checks(base: str) -> bool:
    client = httpx2.Client(base_url=base, timeout=120)
    results = [check_context_length(client), check_bad_regex(client), check_beam_search(client)]
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
        ok = stop_worker(proc, log) and ok
    print(f"worker log: {log}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
