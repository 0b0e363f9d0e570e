"""What the opt-in request log costs the relay, off and on, in microseconds.

    python benchmarks/request_log.py [--chunks 256]

Times, in process, the three places the log touches a request: admission (a
copy of a 1 KB chat body, credentials masked), each streamed chunk (its text
added to the answer) and the end (the entry written beside the usage record),
and the check a request pays per chunk when its log is off.
"""

from __future__ import annotations

import argparse
import json
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from portal.gateway.request_log import LogDraft  # noqa: E402

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "word " * 200}], "max_tokens": 64}
CHUNK = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "tiny",
        "choices": [{"index": 0, "delta": {"content": " fox"}, "finish_reason": None}],
        "usage": None,
    }
)


def microseconds(work: Callable[[], object], number: int) -> float:
    return timeit.timeit(work, number=number) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=256, help="chunks in the answer the end is timed with")
    args = parser.parse_args()

    off: LogDraft | None = None

    def relay_chunk_with_log_off() -> None:
        if off is not None:  # what the relay checks per chunk
            off.add_chunk(CHUNK)

    per_chunk_off = microseconds(relay_chunk_with_log_off, 200_000)
    draft = LogDraft.of(BODY, 7)
    per_chunk_on = microseconds(lambda: draft.add_chunk(CHUNK), 200_000)
    admission = microseconds(lambda: LogDraft.of(BODY, 7), 20_000)
    answered = LogDraft.of(BODY, 7)
    for _ in range(args.chunks):
        answered.add_chunk(CHUNK)
    end = microseconds(answered.entry_field, 20_000)
    print(f"log off: {per_chunk_off:.3f} us a chunk")
    print(
        f"log on:  {per_chunk_on:.2f} us a chunk, {admission:.2f} us at admission (1 KB body), "
        f"{end:.2f} us at the end ({args.chunks} chunks)"
    )


if __name__ == "__main__":
    main()
