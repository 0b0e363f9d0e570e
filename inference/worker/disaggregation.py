"""Prefill/decode disaggregation between workers: the two requests a hand-off takes.

The portal sends a request to a decode worker with `X-Prefill-Workers` (the
prefill workers it chose, best first). The decode worker parses the request as
always, then posts the same body to the first prefill worker that answers,
with `X-Prefill-Only`; that worker prefills the prompt beside its own batch
and answers the hand-off (the engine's bytes: the KV cache rows and the first
token). The KV cache thus goes from worker to worker, never through the
portal, and the decode worker streams the rest to the client. When no prefill
worker answers, or a hand-off does not fit, the decode worker prefills
itself: a request never fails for want of its prefill worker. Nor for a
hand-off too large: one over `handoff_max_bytes` (HANDOFF_MAX_BYTES) is not
read past the limit, and the decode worker prefills itself.

The prompt and the worker token go only to peers the portal named: with a
token only the portal reaches this worker, and it names only our own
registered workers, never a remote endpoint. Without a token the worker
serves loopback only, and so asks only loopback peers.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx2
from starlette.requests import Request

from inference.protocol import GenerateCall
from inference.protocol.headers import PREFILL_ONLY, PREFILL_WORKERS
from inference.worker.auth import is_loopback
from inference.worker.serving import WorkerContext

logger = logging.getLogger(__name__)

CONNECT_SECONDS = 3.0
PREFILL_SECONDS = 120.0


def splittable(ctx: WorkerContext, call: GenerateCall) -> bool:
    """Whether this request can be prefilled apart: one choice, sampled (not beams), no echoed prompt."""
    return ctx.engine.info.disaggregates and call.candidates == 1 and not call.beam_search and not call.echo


def prefill_workers(request: Request) -> list[str]:
    return [a.strip().rstrip("/") for a in request.headers.get(PREFILL_WORKERS, "").split(",") if a.strip()]


def may_ask(address: str, *, token: str | None) -> bool:
    """Whether this worker may send a prompt to `address`: named by the portal, or on loopback."""
    try:
        url = httpx2.URL(address)
    except httpx2.InvalidURL:
        return False
    return url.scheme in ("http", "https") and (bool(token) or is_loopback(url.host))


async def fetch_handoff(
    ctx: WorkerContext, request: Request, request_id: str, payload: dict[str, Any]
) -> bytes | None:
    """The hand-off of this request from the first prefill worker that makes one; None: prefill here."""
    body = json.dumps(payload)
    headers = {
        "Content-Type": "application/json",
        "Accept-Encoding": "identity",  # the bytes as the engine made them: a compressed one is refused
        PREFILL_ONLY: "1",
        "X-Request-Id": f"{request_id}-prefill",
    }
    limit = ctx.handoff_max_bytes
    if ctx.token:
        headers["Authorization"] = f"Bearer {ctx.token}"
    timeout = httpx2.Timeout(PREFILL_SECONDS, connect=CONNECT_SECONDS)
    async with httpx2.AsyncClient(timeout=timeout, trust_env=False) as client:
        for address in prefill_workers(request):
            if not may_ask(address, token=ctx.token):
                logger.warning("Prefill of %s: %r is not a peer this worker asks", request_id, address[:200])
                continue
            try:
                status, blob = await _post(client, f"{address}{request.url.path}", body, headers, limit)
            except httpx2.HTTPError as exc:
                logger.warning("Prefill of %s on %s failed: %s", request_id, address, type(exc).__name__)
                continue
            if status != 200:
                logger.warning("Prefill of %s on %s answered %d", request_id, address, status)
                continue
            if blob is None:  # the next prefill worker's would be as large: the prompt makes the size
                logger.warning(
                    "Prefill of %s on %s: the hand-off is over HANDOFF_MAX_BYTES (%d); prefilling here",
                    request_id, address, limit,
                )  # fmt: skip
                return None
            ctx.handoffs_received += 1
            return blob
    return None


async def _post(
    client: httpx2.AsyncClient, url: str, body: str, headers: dict[str, str], limit: int
) -> tuple[int, bytes | None]:
    """The answer's status and, for a 200, its body; None for a body over `limit` bytes, not read further."""
    async with client.stream("POST", url, content=body, headers=headers) as response:
        if response.status_code != 200:
            return response.status_code, b""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            return 200, None
        chunks, size = [], 0
        async for chunk in response.aiter_raw():  # as sent: `limit` bounds what the socket gives
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return 200, None
        return 200, b"".join(chunks)
