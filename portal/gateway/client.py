"""The pooled HTTP client the gateway talks to workers with.

One `httpx2.AsyncClient` per event loop (daphne has one; tests may run several),
with keep-alive so that a request does not pay a TCP handshake.
"""

from __future__ import annotations

import asyncio

import httpx2
from django.conf import settings

_clients: dict[asyncio.AbstractEventLoop, httpx2.AsyncClient] = {}


def get_client() -> httpx2.AsyncClient:
    """The client for the running loop, created on first use with timeouts from settings."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        for old in [other for other in _clients if other.is_closed()]:
            del _clients[old]
        client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(
                connect=settings.GATEWAY_CONNECT_TIMEOUT,
                read=settings.GATEWAY_READ_TIMEOUT,
                write=settings.GATEWAY_CONNECT_TIMEOUT,
                pool=settings.GATEWAY_CONNECT_TIMEOUT,
            ),
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30),
            trust_env=False,
        )
        _clients[loop] = client
    return client
