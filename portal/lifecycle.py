"""What the portal does when its server starts and stops: start the usage writer, drain it.

Daphne runs on Twisted and does not speak ASGI lifespan, so the hooks go on
its reactor; its TCP connections are made to write at once (`eager_writes`).
SIGTERM stops the reactor, which waits for the drain first: a record of a
request that finished before the signal reaches the database.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from django.conf import settings

from portal.gateway.gateway import current

logger = logging.getLogger(__name__)
DRAIN_SECONDS = 20.0  # below the usual stop grace periods (systemd 90 s, Kubernetes 30 s)


def install() -> None:
    """Hook into daphne's reactor when the portal runs under it (not in tests or other servers)."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return
    from twisted.internet.defer import Deferred

    from portal import eager_writes

    eager_writes.install()

    def start() -> None:
        if settings.REDIS_URL:
            # Take up the stream at once: records a dead portal left wait for no request here.
            current().usage.stream()

    def drain() -> Deferred:
        return Deferred.fromFuture(asyncio.ensure_future(_drain()))

    reactor.callLater(0, start)  # its first turn of the event loop (a running loop is needed)
    reactor.addSystemEventTrigger("before", "shutdown", drain)


async def _drain() -> None:
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            await current().usage.flush()
    except Exception:
        logger.exception("usage records not drained at shutdown")
