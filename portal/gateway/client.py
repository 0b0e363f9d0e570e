"""The pooled HTTP client the gateway talks to workers with: keep-alive, timeouts from settings.

The gateway holds one per event loop (`Gateway.client`), so that a request
does not pay a TCP handshake.
"""

from __future__ import annotations

import httpx2
from django.conf import settings


def make_client(transport: httpx2.AsyncBaseTransport | None = None) -> httpx2.AsyncClient:
    """A client with timeouts from settings; `transport` replaces the network (tests)."""
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(
            connect=settings.GATEWAY_CONNECT_TIMEOUT,
            read=settings.GATEWAY_READ_TIMEOUT,
            write=settings.GATEWAY_CONNECT_TIMEOUT,
            pool=settings.GATEWAY_CONNECT_TIMEOUT,
        ),
        limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30),
        trust_env=False,
        transport=transport,
    )
