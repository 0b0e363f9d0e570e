"""The usage writer: where a finished request's record waits until it is in the database.

A record goes to a buffer and is written in batches:
- with REDIS_URL, a Redis stream (`usage_stream`), added to before the
  response's last bytes leave, so a portal killed with -9 loses nothing that
  its clients saw finish; every portal writes the stream to the database;
- without it (the embedded default: one portal, SQLite), this process's
  memory, written every USAGE_FLUSH_SECONDS and drained on shutdown.

A batch the database cannot take (it is down, or restarting) is kept and
retried, never dropped. The portal's gateway owns one writer; its stream is
per event loop, which the gateway keeps (`streams`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from django.conf import settings
from django.utils import timezone

from registry.services.usage import DATABASE_AWAY, RETRY_SECONDS_MAX, UsageEntry, write_batch_async
from registry.services.usage_stream import UsageStream

logger = logging.getLogger(__name__)


class UsageWriter:
    """This process's usage buffer in memory, and its way into the shared stream (REDIS_URL)."""

    def __init__(self, streams: Callable[[str, Callable[[], UsageStream]], UsageStream]) -> None:
        # `streams(url, make)`: the running loop's stream of `url`, made by `make` on first use.
        self._streams = streams
        self.buffer: list[UsageEntry] = []
        self._flusher: asyncio.Task[None] | None = None
        self._flush_now: asyncio.Event | None = None  # cuts the flusher's wait short (shutdown, tests)

    def stream(self) -> UsageStream:
        """The running loop's stream of REDIS_URL, its writer started."""
        url = str(settings.REDIS_URL)
        stream = self._streams(url, lambda: UsageStream(url, fallback=self.buffer_in_memory))
        stream.start_writer()
        return stream

    def schedule(self, entry: UsageEntry) -> asyncio.Task[None] | None:
        """Buffer the record; the response never waits for the database, and one INSERT carries many.

        With REDIS_URL, returns the task adding it to the shared stream: await it
        before the response ends so that the record outlives this process.
        """
        entry.created_at = entry.created_at or timezone.now()
        if settings.REDIS_URL:
            return asyncio.get_running_loop().create_task(self.stream().add(entry))
        self.buffer_in_memory(entry)
        return None

    def buffer_in_memory(self, entry: UsageEntry) -> None:
        """Queue the record in this process; a background task writes the queue in batches."""
        self.buffer.append(entry)
        loop = asyncio.get_running_loop()
        if self._flusher is None or self._flusher.done() or self._flusher.get_loop() is not loop:
            self._flush_now = asyncio.Event()
            self._flusher = loop.create_task(self._flush_after_delay(self._flush_now))

    async def flush(self) -> None:
        """Write what this process holds now (tests, shutdown): its memory buffer and its stream share."""
        flusher = self._flusher
        if flusher is not None and not flusher.done() and flusher.get_loop() is asyncio.get_running_loop():
            assert self._flush_now is not None
            self._flush_now.set()
            await flusher
        await self.write_buffer()
        if settings.REDIS_URL:
            await self.stream().drain()

    async def write_buffer(self) -> None:
        """Write the in-memory buffer until it is empty, waiting out a database that is away."""
        delay = settings.USAGE_FLUSH_SECONDS
        while self.buffer:
            batch = self.buffer[:]
            self.buffer.clear()
            try:
                await write_batch_async(batch)
                delay = settings.USAGE_FLUSH_SECONDS
            except DATABASE_AWAY as exc:
                self.buffer[:0] = batch  # kept, in order, ahead of what came meanwhile
                delay = min(max(delay, 0.5) * 2, RETRY_SECONDS_MAX)
                logger.warning("%d usage records wait for the database: %s", len(self.buffer), exc)
                await asyncio.sleep(delay)

    async def _flush_after_delay(self, flush_now: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(flush_now.wait(), settings.USAGE_FLUSH_SECONDS)
        await self.write_buffer()
