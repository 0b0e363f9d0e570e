"""How far a key's tokens per minute can be overshot: real embeddings through a real portal.

    python benchmarks/limit_overshoot.py [--burst 16] [--tpm 1000] [--repeat 240]

In one run: a scratch SQLite database, a MiniLM worker (the packaged
all-MiniLM-L6-v2: WordPiece, one token per "!") and a daphne portal. The
input is "!" × REPEAT, which MiniLM counts as REPEAT + 2 tokens.

1. A key at 100 tokens per minute sends it once: the answer, and the tokens
   the worker counted.
2. A key at --tpm sends --burst of them at once, then the same burst again
   in the same minute: the requests served, and the tokens the worker
   counted for them against the key's limit (the overshoot).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.gateway_overhead import environment, manage  # noqa: E402
from tests.portal_process import PortalProcess, free_port  # noqa: E402
from tests.processes import start_worker  # noqa: E402

MODEL = "minilm"


async def send(url: str, secret: str, body: dict[str, Any], count: int) -> list[httpx2.Response]:
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx2.AsyncClient(timeout=120) as client:
        posts = [client.post(url, json=body, headers=headers) for _ in range(count)]
        return list(await asyncio.gather(*posts))


def counted(responses: list[httpx2.Response]) -> int:
    return sum(r.json()["usage"]["prompt_tokens"] for r in responses if r.status_code == 200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--burst", type=int, default=16)
    parser.add_argument("--tpm", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=240)
    args = parser.parse_args()
    body = {"model": MODEL, "input": "!" * args.repeat}
    with tempfile.TemporaryDirectory(prefix="overshoot-bench-") as tmp:
        env = environment(tmp)
        manage(env, "migrate", "--noinput")
        worker_args = ("--model-path", "all-minilm-l6-v2", "--model-names", MODEL, "--max-concurrency", "32")
        with start_worker(*worker_args, env=env, timeout=300):
            portal = PortalProcess(free_port(), env)
            try:
                portal.wait_ready(60)
                url = f"{portal.url}/v1/embeddings"
                small = manage(env, "createapikey", "--name", "small", "--tpm", "100")
                (one,) = asyncio.run(send(url, small, body, 1))
                answer = one.json()
                detail = answer["usage"] if one.status_code == 200 else answer["error"]
                print(f'key at 100 tpm, input "!" x {args.repeat}: {one.status_code} {detail}')

                key = manage(env, "createapikey", "--name", "burst", "--tpm", str(args.tpm))
                if 60 - time.time() % 60 < 20:  # both bursts inside one minute
                    time.sleep(60 - time.time() % 60 + 0.2)
                responses = asyncio.run(send(url, key, body, args.burst))
                responses += asyncio.run(send(url, key, body, args.burst))
                served = sum(1 for r in responses if r.status_code == 200)
                tokens = counted(responses)
                print(
                    f"key at {args.tpm} tpm, 2 bursts of {args.burst} at once: {served} served, "
                    f"{len(responses) - served} refused; {tokens} tokens counted by the worker "
                    f"= {tokens / args.tpm:.2f} x the limit"
                )
            finally:
                portal.stop()


if __name__ == "__main__":
    main()
