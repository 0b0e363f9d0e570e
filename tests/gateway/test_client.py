"""The gateway's client toward workers, over real loopback sockets: how each way a worker fails reads.

The transport (aiohttp under httpx2's API) names a refused or dropped connection
ConnectTimeout; `timed_out` and `fault_name` must still tell a connection never
made (another worker may take the request) from a worker too slow to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx2
import pytest

from portal.gateway.client import NEVER_SENT, fault_name, make_client, timed_out

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
EVENT = b'data: {"a": 1}\n\n'
CHUNK = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)


async def _fetch(port: int, read_timeout: float = 5.0) -> list[bytes]:
    client = make_client()
    client.timeout = httpx2.Timeout(5.0, read=read_timeout)
    try:
        request = client.build_request("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json={})
        response = await client.send(request, stream=True)
        try:
            return [chunk async for chunk in response.aiter_bytes()]
        finally:
            await response.aclose()
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _serving(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _failure(handler: Handler | None, read_timeout: float = 5.0) -> httpx2.HTTPError:
    if handler is None:  # a port nothing listens on
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with pytest.raises(httpx2.HTTPError) as info:
            await _fetch(port)
        return info.value
    async with _serving(handler) as port:
        with pytest.raises(httpx2.HTTPError) as info:
            await asyncio.wait_for(_fetch(port, read_timeout), 10)
    return info.value


def _worker(sends: bytes, then_wait: float = 0.0) -> Handler:
    """A worker that reads the request, sends `sends`, waits `then_wait` seconds and hangs up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readuntil(b"}")  # the JSON body, {}
        writer.write(sends)
        await writer.drain()
        await asyncio.sleep(then_wait)
        writer.close()

    return handle


async def test_a_whole_stream_reads_as_sent():
    async with _serving(_worker(HEAD + CHUNK + CHUNK + b"0\r\n\r\n")) as port:
        assert b"".join(await _fetch(port)) == EVENT + EVENT


async def test_a_refused_connection_was_never_sent():
    error = await _failure(None)
    assert isinstance(error, NEVER_SENT)
    assert not timed_out(error)
    assert fault_name(error) == "ClientConnectorError"


async def test_a_connection_dropped_before_the_answer_is_not_a_timeout():
    error = await _failure(_worker(b""))
    assert not timed_out(error)
    assert fault_name(error) == "ServerDisconnectedError"


async def test_a_stream_cut_after_its_first_event_breaks():
    error = await _failure(_worker(HEAD + CHUNK))
    assert isinstance(error, httpx2.ReadError)
    assert not timed_out(error)
    assert fault_name(error) == "ClientPayloadError"


async def test_a_worker_that_stops_sending_times_out():
    error = await _failure(_worker(HEAD + CHUNK, then_wait=3), read_timeout=0.3)
    assert timed_out(error)
    assert isinstance(error, httpx2.ReadTimeout)
