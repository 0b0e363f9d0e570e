"""The floor of any relay on our stack: a bare ASGI app under daphne, streaming through the portal's client.

No authentication, limits, dispatch, queue or usage record: only the hop
(daphne in front, writing at once as the portal's does; behind, a pooled
httpx2 client on aiohttp's transport, as the portal's). `gateway_overhead.py`
runs it beside the portal, so the portal's own cost is the difference.

    UPSTREAM=http://127.0.0.1:PORT daphne -b 127.0.0.1 -p PORT2 benchmarks.bare_relay:app
"""

from __future__ import annotations

import os
from typing import Any

import httpx2
from httpx_aiohttp.httpx2 import AiohttpTransport

from portal import eager_writes

eager_writes.install()

_client: httpx2.AsyncClient | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _client
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if _client is None:
        limits = httpx2.Limits(max_connections=1024)  # aiohttp's pool keeps every idle connection it may
        _client = httpx2.AsyncClient(timeout=300, transport=AiohttpTransport(limits=limits, trust_env=False))
    url = os.environ["UPSTREAM"] + scope["path"]
    request = _client.build_request("POST", url, content=body, headers={"Content-Type": "application/json"})
    response = await _client.send(request, stream=True)
    headers = [(b"content-type", response.headers.get("content-type", "text/event-stream").encode())]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    try:
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    finally:
        await response.aclose()
    await send({"type": "http.response.body", "body": b"", "more_body": False})
