"""The pooled HTTP client the gateway talks to workers with: keep-alive, timeouts from settings.

The gateway holds one per event loop (`Gateway.client`), so that a request
does not pay a TCP handshake. Its API is httpx2's (tests pass their own
transports); its network layer is aiohttp's (httpx-aiohttp's transport),
whose C parser and pool relay a stream's chunks with less CPU than httpx2's
own: at 64 concurrent streams from a canned worker, side by side, the portal
kept 0.81–0.91 of direct throughput with it, 0.71–0.83 without (README).
"""

from __future__ import annotations

import aiohttp
import httpx2
from django.conf import settings
from httpx_aiohttp.httpx2 import AiohttpTransport

# Raised before the request reached a worker: another may take it. The transport raises
# ConnectTimeout for a refused connection, and for one dropped before any answer, too.
NEVER_SENT = (httpx2.ConnectTimeout, httpx2.PoolTimeout)


def make_client(transport: httpx2.AsyncBaseTransport | None = None) -> httpx2.AsyncClient:
    """A client with timeouts from settings; `transport` replaces the network (tests)."""
    limits = httpx2.Limits(max_connections=1000, keepalive_expiry=30)
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(
            connect=settings.GATEWAY_CONNECT_TIMEOUT,
            read=settings.GATEWAY_READ_TIMEOUT,
            write=settings.GATEWAY_CONNECT_TIMEOUT,
            pool=settings.GATEWAY_CONNECT_TIMEOUT,
        ),
        trust_env=False,
        transport=transport or AiohttpTransport(limits=limits, trust_env=False),
    )


def timed_out(exc: BaseException) -> bool:
    """Whether a worker that had the request took too long to answer (not a connection never made)."""
    return isinstance(exc, httpx2.TimeoutException) and not isinstance(exc, NEVER_SENT)


def fault_name(exc: BaseException) -> str:
    """What broke, by name: aiohttp's own error where the transport mapped one (ClientConnectorError…)."""
    cause = exc.__cause__
    return type(cause if isinstance(cause, aiohttp.ClientError) else exc).__name__
