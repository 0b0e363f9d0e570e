"""Remote endpoints: external OpenAI-compatible servers registered as `Worker(kind=remote)`.

Nothing heartbeats for them, so a periodic probe does: `GET {base}/models` with
the endpoint's key. Success keeps it online (expires_at pushed forward);
failure marks it offline with the error, and dispatch stops choosing it.

The error stored is a status code and a fixed message ("HTTP 500 from
/v1/models", "timed out"), never the endpoint's own words: its answer is text
from outside the fleet, shown to staff in the admin, and could be anything.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import httpx2
from django.conf import settings
from django.utils import timezone

from registry.models import Worker, WorkerIntent, WorkerKind, WorkerStatus

ANSWER_MAX_BYTES = 1 << 20  # a model list; a longer answer is not one worth reading
ANSWER_SECONDS = 10.0  # the whole answer, however slowly it drips (the client's timeout is per read)


def probe_remote_endpoint(*, worker: Worker, client: httpx2.Client | None = None) -> bool:
    """Probe one remote endpoint and record the outcome on its row; return whether it answered."""
    headers = {"Authorization": f"Bearer {worker.remote_api_key}"} if worker.remote_api_key else {}
    url = worker.address.rstrip("/") + "/models"
    http = client or httpx2.Client(timeout=settings.GATEWAY_CONNECT_TIMEOUT, trust_env=False)
    try:
        error = probe_error(http, url, headers)
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


def probe_error(http: httpx2.Client, url: str, headers: dict[str, str]) -> str:
    """What went wrong with `url`, in our words only; an empty string when it answers 200 with JSON."""
    where = httpx2.URL(url).path
    try:
        with http.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                return f"HTTP {response.status_code} from {where}"
            body = _read_at_most(response, ANSWER_MAX_BYTES)
    except httpx2.TimeoutException:
        return f"timed out ({where})"
    except httpx2.ConnectError as exc:
        return f"connection refused ({where})" if _refused(exc) else f"cannot connect ({where})"
    except httpx2.HTTPError:
        return f"broken answer from {where}"  # a reset, or not HTTP
    if body is None:
        return f"answer over {ANSWER_MAX_BYTES} bytes from {where}"
    try:
        json.loads(body)
    except ValueError:
        return f"not JSON from {where}"
    return ""


def _read_at_most(response: httpx2.Response, limit: int) -> bytes | None:
    """The body, or None once it passes `limit` bytes (the rest is never read)."""
    deadline = time.monotonic() + ANSWER_SECONDS
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > limit:
            return None
        if time.monotonic() > deadline:
            raise httpx2.ReadTimeout("the answer took too long", request=response.request)
    return bytes(body)


def _refused(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def probe_remote_endpoints() -> int:
    """Probe every remote endpoint an operator has not drained; return how many answered."""
    with httpx2.Client(timeout=settings.GATEWAY_CONNECT_TIMEOUT, trust_env=False) as client:
        return sum(
            probe_remote_endpoint(worker=w, client=client)
            for w in Worker.objects.filter(kind=WorkerKind.REMOTE, intent=WorkerIntent.SERVE)
        )
