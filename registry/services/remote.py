"""Remote endpoints: external OpenAI-compatible servers registered as `Worker(kind=remote)`.

Nothing heartbeats for them, so a periodic probe does: `GET {base}/models` with
the endpoint's key. Success keeps it online (expires_at pushed forward);
failure marks it offline with the error, and dispatch stops choosing it.
"""

from __future__ import annotations

from datetime import timedelta

import httpx2
from django.conf import settings
from django.utils import timezone

from registry.models import Worker, WorkerIntent, WorkerKind, WorkerStatus


def probe_remote_endpoint(*, worker: Worker, client: httpx2.Client | None = None) -> bool:
    """Probe one remote endpoint and record the outcome on its row; return whether it answered."""
    headers = {"Authorization": f"Bearer {worker.remote_api_key}"} if worker.remote_api_key else {}
    url = worker.address.rstrip("/") + "/models"
    http = client or httpx2.Client(timeout=settings.GATEWAY_CONNECT_TIMEOUT, trust_env=False)
    try:
        response = http.get(url, headers=headers)
        error = "" if response.status_code == 200 else f"HTTP {response.status_code}: {response.text[:300]}"
    except httpx2.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if client is None:
            http.close()
    now = timezone.now()
    if error:
        worker.status, worker.last_error = WorkerStatus.OFFLINE, error
    else:
        # Online until a probe has been missed for as long as a heartbeat may be.
        window = settings.HEARTBEAT_INTERVAL * settings.HEARTBEAT_EXPIRY_INTERVALS
        worker.status, worker.last_error = WorkerStatus.ONLINE, ""
        worker.last_heartbeat = now
        worker.expires_at = now + max(timedelta(seconds=window), timedelta(minutes=2))
    worker.save(update_fields=["status", "last_error", "last_heartbeat", "expires_at"])
    return not error


def probe_remote_endpoints() -> int:
    """Probe every remote endpoint an operator has not drained; return how many answered."""
    with httpx2.Client(timeout=settings.GATEWAY_CONNECT_TIMEOUT, trust_env=False) as client:
        return sum(
            probe_remote_endpoint(worker=w, client=client)
            for w in Worker.objects.filter(kind=WorkerKind.REMOTE, intent=WorkerIntent.SERVE)
        )
