"""The shared usage buffer: a Redis stream every portal adds to and writes to the database from.

A record is added (XADD) before its response ends; it then outlives the
portal that served it. Each portal process reads the stream as one consumer
of one group and acknowledges entries once they are in the database, so an
entry is written by one portal. What a portal read and did not acknowledge
before it died is claimed by another after USAGE_CLAIM_SECONDS; the database skips
request ids it already holds (a unique index, checked inside the INSERT), so a
claim after a write that was not yet acknowledged, or while it is still under
way, does not count a request twice.

The gateway holds one `UsageStream` per event loop (`usage_writer.UsageWriter`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

import redis.asyncio as redis
from django.conf import settings
from redis.exceptions import RedisError, ResponseError

from registry.services import usage

logger = logging.getLogger(__name__)

STREAM = "portal:usage"
GROUP = "usage-writers"
BATCH = 500
BLOCK_MS = 1000

Message = tuple[bytes, dict[bytes, bytes]]


def encode(entry: usage.UsageEntry) -> dict[str, str]:
    fields = asdict(entry)
    fields["created_at"] = entry.created_at.isoformat() if entry.created_at else None
    return {"entry": json.dumps(fields)}


def decode(fields: dict[bytes, bytes]) -> usage.UsageEntry:
    data: dict[str, Any] = json.loads(fields[b"entry"])
    if data.get("created_at"):
        data["created_at"] = datetime.fromisoformat(data["created_at"])
    return usage.UsageEntry(**data)


class UsageStream:
    """This process's side of the stream, on one event loop: its adds and its writer task."""

    def __init__(self, url: str, fallback: Callable[[usage.UsageEntry], None]) -> None:
        self.url = url
        self.fallback = fallback  # where a record goes while Redis is away: this process's memory
        # The writer's reads wait up to BLOCK_MS by design: their client waits longer than that.
        self.redis = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=BLOCK_MS / 1000 + 4)
        # A response's last bytes wait for its add: a stalled Redis holds them REDIS_TIMEOUT_SECONDS at
        # most (the record then waits in memory).
        timeout = settings.REDIS_TIMEOUT_SECONDS
        self.adds = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()  # one read-write-acknowledge cycle at a time (the writer, a drain)
        self.writer: asyncio.Task[None] | None = None
        self.stopping = False
        self.group_ready = False

    async def add(self, entry: usage.UsageEntry) -> None:
        try:
            await self.adds.xadd(STREAM, encode(entry))  # type: ignore[arg-type]
        except RedisError as exc:
            # Redis is away: this process still writes the record, only a kill -9 meanwhile loses it.
            logger.warning("usage record %s kept in memory, Redis failed: %s", entry.request_id, exc)
            self.fallback(entry)

    def start_writer(self) -> None:
        if not self.stopping and (self.writer is None or self.writer.done()):
            self.writer = self.loop.create_task(self._write_forever())

    async def stop_writer(self) -> None:
        """Stop the writer (tests; the stream's entries stay for a drain or another portal)."""
        self.stopping = True
        writer = self.writer
        if writer is not None and not writer.done():
            writer.cancel()
            # A cancel that lands inside a Redis read can come back out of redis-py as a timeout, which
            # the loop takes for a Redis failure: `stopping` ends it at its next turn.
            await asyncio.wait([writer], timeout=BLOCK_MS / 1000 + 5)

    async def _write_forever(self) -> None:
        delay = 0.5
        while not self.stopping:
            try:
                async with self.lock:
                    await self._cycle(block_ms=BLOCK_MS)
                delay = 0.5
            except Exception as exc:  # Redis or the database away; the entries wait in the stream
                if self.stopping:
                    return
                self.group_ready = not isinstance(exc, ResponseError)  # NOGROUP after Redis lost its data
                logger.warning("usage stream: %s: %s; retry in %.1f s", type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, usage.RETRY_SECONDS_MAX)

    async def _cycle(self, block_ms: int | None) -> int:
        """Write one batch: this consumer's unacknowledged entries first, then a dead one's, then new ones."""
        if not self.group_ready:
            try:
                await self.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self.group_ready = True
        messages = await self._read("0", None)
        if not messages:
            idle_ms = int(settings.USAGE_CLAIM_SECONDS * 1000)
            claimed = await self.redis.xautoclaim(STREAM, GROUP, self.consumer, idle_ms, count=BATCH)
            messages = claimed[1]
        if not messages:
            messages = await self._read(">", block_ms)
        if messages:
            await self._write(messages)
        return len(messages)

    async def _read(self, start: str, block_ms: int | None) -> list[Message]:
        streams: dict[Any, Any] = {STREAM: start}
        answer = await self.redis.xreadgroup(GROUP, self.consumer, streams, count=BATCH, block=block_ms)
        return [(message_id, fields) for _, messages in answer for message_id, fields in messages if fields]

    async def _write(self, messages: list[Message]) -> None:
        entries = []
        for message_id, fields in messages:
            try:
                entries.append(decode(fields))
            except (KeyError, ValueError, TypeError):
                logger.exception("usage stream entry %s cannot be read; dropped", message_id)
        if entries:
            await usage.write_batch_async(entries)
        ids = [message_id for message_id, _ in messages]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(STREAM, GROUP, *ids)
            pipe.xdel(STREAM, *ids)
            await pipe.execute()

    async def drain(self) -> None:
        """Write everything the stream holds now, not waiting for more."""
        async with self.lock:
            while await self._cycle(block_ms=None):
                pass
