"""A stream whose client leaves before its first byte is still closed (aborted, recorded, settled)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from portal.api.views import EventStreamResponse
from portal.handlers import APIHandler


class RecordingStream:
    """Stands in for an opened ChatStream: one event, and a record of whether it was closed."""

    def __init__(self) -> None:
        self.closed = 0

    async def sse(self) -> AsyncIterator[bytes]:
        yield b"data: {}\n\n"

    async def aclose(self) -> None:
        self.closed += 1


SCOPE = {
    "type": "http",
    "method": "POST",
    "path": "/v1/chat/completions",
    "headers": [],
    "query_string": b"",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 50000),
}


async def serve_to(stream: RecordingStream, send: Any, receive: Any, monkeypatch: Any) -> None:
    handler = APIHandler()
    response = EventStreamResponse(stream)  # type: ignore[arg-type]

    async def respond(request: Any) -> EventStreamResponse:
        return response

    monkeypatch.setattr(handler, "run_get_response", respond)
    await asyncio.wait_for(handler.handle(dict(SCOPE), receive, send), timeout=10)


async def test_a_client_gone_before_the_first_byte_still_closes_the_stream(monkeypatch):
    stream = RecordingStream()
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])
    left = asyncio.Event()

    async def receive() -> dict:
        message = next(messages, None)
        if message is not None:
            return message
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        left.set()  # the client goes away while the headers are being sent
        await asyncio.Event().wait()

    await serve_to(stream, send, receive, monkeypatch)
    assert stream.closed == 1


async def test_a_stream_sent_to_its_end_is_closed_once_more_harmlessly(monkeypatch):
    stream = RecordingStream()
    sent: list[dict] = []
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}])
    done = asyncio.Event()

    async def receive() -> dict:
        message = next(messages, None)
        if message is not None:
            return message
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    await serve_to(stream, send, receive, monkeypatch)
    assert b"data: {}" in b"".join(m.get("body", b"") for m in sent)
    assert stream.closed >= 1  # the generator's finally, then the handler's (a no-op on a real stream)
