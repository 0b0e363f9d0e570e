"""Calls to one worker: its URLs, the headers of every call, and the abort call.

Below the ticket and the failover, which both use them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import httpx2
from django.conf import settings

from inference.protocol.headers import PREFILL_WORKERS
from portal.gateway.figures import clean_usage
from registry.models import WorkerKind

if TYPE_CHECKING:
    from portal.gateway.gateway import Gateway

logger = logging.getLogger(__name__)
ABORT_TIMEOUT_SECONDS = 2.0


def worker_url(worker: Any, endpoint: str) -> str:
    """Our workers serve `/v1/...`; a remote endpoint is registered with its `/v1` base already."""
    base = worker.address.rstrip("/")
    return f"{base}/{endpoint}" if worker.kind == WorkerKind.REMOTE else f"{base}/v1/{endpoint}"


def _authorization(worker: Any) -> dict[str, str]:
    # Our workers answer only the portal (WORKER_TOKEN); a remote endpoint gets the key registered for it.
    remote = worker.kind == WorkerKind.REMOTE
    secret = worker.remote_api_key if remote else settings.WORKER_TOKEN
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def worker_headers(worker: Any, request_id: str) -> dict[str, str]:
    """Headers of every call to `worker`; `request_id` is always one the portal made."""
    headers = {"X-Request-Id": request_id, **_authorization(worker)}
    if worker.kind == WorkerKind.LOCAL and getattr(worker, "prefill_from", ()):
        headers[PREFILL_WORKERS] = ",".join(worker.prefill_from)  # a decode worker: where to prefill
    return headers


async def abort_request(gateway: Gateway, worker: Any, request_id: str) -> dict[str, int] | None:
    """Tell our worker to stop `request_id`; return its usage so far when the worker reports it.

    The worker answers `{"id", "aborted", "usage"}`, a request that has just
    finished included. A remote endpoint stops when its connection closes and
    reports nothing: None, as for a worker that cannot be reached.
    """
    if worker.kind == WorkerKind.REMOTE:
        return None
    url = f"{worker.address.rstrip('/')}/abort/{request_id}"
    try:
        response = await gateway.client.post(
            url, headers=worker_headers(worker, request_id), timeout=ABORT_TIMEOUT_SECONDS
        )
        answer = response.json() if response.status_code == 200 else None
    except (httpx2.HTTPError, ValueError) as exc:
        logger.info("abort of request %s on %s failed: %s", request_id, worker.address, exc)
        return None
    return clean_usage(answer.get("usage")) if isinstance(answer, dict) else None
