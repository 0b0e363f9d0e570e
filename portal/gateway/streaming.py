"""ChatStream: a streaming completion relayed from a worker, chunk by chunk.

`open()` dispatches and waits for the first event, so that a worker that
refuses or dies before its first byte is replaced by another (failover) and
the client still gets an honest status code. After that, a failure becomes one
error event and the stream ends. Closing early aborts the request on the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx2

from portal.gateway.client import fault_name, timed_out
from portal.gateway.errors import GatewayError, worker_failed, worker_timeout
from portal.gateway.figures import clean_usage
from portal.gateway.prepare import Prepared
from portal.gateway.upstream import (
    WorkerDied,
    error_from_response,
    timeout_seconds,
    with_failover,
)
from portal.gateway.worker_calls import worker_headers, worker_url
from registry.models import UsageStatus

if TYPE_CHECKING:
    from portal.gateway.gateway import Gateway

DONE = b"data: [DONE]\n\n"
READ_TO_END_SECONDS = 1.0


def _may_carry_usage(payload: str) -> bool:
    """A cheap test that spares parsing the JSON of every ordinary chunk."""
    return '"usage":' in payload and '"usage": null' not in payload and '"usage":null' not in payload


def _has_content(payload: str) -> bool:
    """Whether a chunk carries generated text (a cheap test, without parsing the JSON)."""
    for key in ('"content":', '"text":'):
        at = payload.find(key)
        if at >= 0:
            return not payload[at + len(key) :].lstrip().startswith(('""', "null"))
    return False


async def _event_batches(response: httpx2.Response) -> AsyncIterator[list[str]]:
    """The stream's `data:` payloads, "[DONE]" included, grouped by the read that completed them.

    Lines end in LF or CRLF (a bare CR is not a line end here: workers do not send it).
    """
    rest = b""
    async for chunk in response.aiter_bytes():
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        batch = [line[5:].strip().decode("utf-8", "replace") for line in lines if line.startswith(b"data:")]
        if batch:
            yield batch
    if rest.startswith(b"data:"):  # the last line, without its line end
        yield [rest[5:].strip().decode("utf-8", "replace")]


class ChatStream:
    """Async iterator of OpenAI chunk dicts for a streaming chat (or text) completion."""

    def __init__(self, gateway: Gateway, prepared: Prepared) -> None:
        self._gateway = gateway
        self._prepared = prepared
        self.request_id = prepared.request_id
        self.worker_identity: str | None = None
        self.usage: dict | None = None
        self.time_to_first_token_ms: float | None = None
        self._endpoint = prepared.door
        self._include_usage = prepared.include_usage
        self._ticket = prepared.ticket
        self._response: httpx2.Response | None = None
        self._batches: AsyncIterator[list[str]] | None = None
        self._first: list[str] | None = None
        self._payloads: AsyncIterator[list[str]] | None = None

    async def open(self) -> None:
        """Dispatch and read the first event; raise GatewayError if no worker could start it."""
        prepared = self._prepared
        try:
            await with_failover(prepared.model, self._ticket, lambda w: self._attempt(w, prepared.body))
        except GatewayError as exc:
            await self._close_response()
            self._ticket.finish(UsageStatus.ERROR, exc)
            raise
        except BaseException:
            await self._close_response()
            self._ticket.finish(UsageStatus.CANCELLED)
            raise

    async def _attempt(self, worker: Any, out: dict[str, Any]) -> None:
        self.worker_identity = worker.identity
        try:
            await self._start(worker, out)
        except BaseException:
            await self._close_response()
            raise

    async def _start(self, worker: Any, out: dict[str, Any]) -> None:
        """Send the request and hold its first event; raise on a refusal or an early death."""
        client = self._gateway.client
        url, headers = worker_url(worker, self._endpoint), worker_headers(worker, self.request_id)
        request = client.build_request("POST", url, json=out, headers=headers)
        response = await client.send(request, stream=True)
        self._response = response
        if response.status_code != 200:
            content = await response.aread()
            await self._close_response()
            raise error_from_response(response.status_code, content)
        self._batches = _event_batches(response)
        first = await anext(self._batches, None)
        if first is None:
            raise WorkerDied("the stream ended before its first event")
        self._first = first
        self._ticket.first_token()
        self.time_to_first_token_ms = self._ticket.entry.time_to_first_token_ms

    async def _read_to_end(self) -> None:
        # The response's last chunk follows [DONE]: a response read to its end returns its
        # connection to the pool, one closed before is dropped and the next request reconnects.
        # Bounded: an upstream that stalls after [DONE] only costs its connection.
        assert self._batches is not None
        with contextlib.suppress(httpx2.HTTPError, TimeoutError):
            async with asyncio.timeout(READ_TO_END_SECONDS):
                async for _ in self._batches:
                    pass

    def _note(self, payload: str) -> bool:
        """Record usage and errors from a payload; False when the client must not see it."""
        if _may_carry_usage(payload) or '"error":' in payload:
            try:
                chunk = json.loads(payload)
            except ValueError:
                chunk = None
            if not isinstance(chunk, dict):
                raise WorkerDied("the worker sent an event that is not a JSON object")
            if chunk.get("error"):
                error = chunk["error"]
                message = error.get("message") if isinstance(error, dict) else error
                self._ticket.finish(UsageStatus.ERROR, worker_failed(str(message)))
            if chunk.get("usage"):
                self.usage = clean_usage(chunk["usage"])
                self._ticket.set_usage(self.usage)
                # We asked the worker for usage; a client that did not gets no usage-only chunk.
                return self._include_usage or bool(chunk.get("choices"))
        return True

    def payloads(self) -> AsyncIterator[list[str]]:
        """The events' JSON text as the worker sent it (no re-encoding), in batches, up to [DONE].

        A batch is what one read from the worker completed: several events at once
        under load, so that they reach the client in one write.
        """
        if self._payloads is None:
            self._payloads = self._iterate()
        return self._payloads

    async def _iterate(self) -> AsyncIterator[list[str]]:
        if self._first is None or self._batches is None:
            raise RuntimeError("ChatStream.open() must be awaited before iterating.")
        batch: list[str] | None = self._first
        done = False
        try:
            while batch is not None and not done:
                relayed = []
                for payload in batch:
                    if payload == "[DONE]":
                        done = True
                        break
                    if self._note(payload):
                        relayed.append(payload)
                if relayed:
                    yield relayed
                if not done:
                    batch = await anext(self._batches, None)
            if not done:
                raise WorkerDied("the worker closed the stream before [DONE]")
            self._ticket.finish()
            await self._ticket.recorded()
            await self._read_to_end()
        except (httpx2.HTTPError, WorkerDied) as exc:
            error = worker_timeout(timeout_seconds()) if timed_out(exc) else None
            error = error or worker_failed(f"the stream broke ({fault_name(exc)}).")
            self._ticket.finish(UsageStatus.ERROR, error)
            yield [json.dumps(error.to_openai())]
        finally:
            # Reaching here unfinished means the consumer left early: abort and record it as cancelled.
            self._ticket.finish(UsageStatus.CANCELLED)
            await self._close_response()

    def _relaying(self, payload: str) -> None:
        # Counted as it goes out: a stream cut short is billed for the chunks its client got.
        self._ticket.chunks += _has_content(payload)
        if self._ticket.log is not None:
            self._ticket.log.add_chunk(payload)

    def __aiter__(self) -> AsyncIterator[dict]:
        return self._dicts()

    async def _dicts(self) -> AsyncIterator[dict]:
        async for batch in self.payloads():
            for payload in batch:
                self._relaying(payload)
                yield json.loads(payload)

    async def sse(self) -> AsyncIterator[bytes]:
        """Server-sent events for the client, a batch per write, ending with `data: [DONE]`."""
        async for batch in self.payloads():
            for payload in batch:
                self._relaying(payload)
            yield b"".join(b"data: " + payload.encode() + b"\n\n" for payload in batch)
        yield DONE

    async def aclose(self) -> None:
        """Stop early: abort the request on the worker and record it as cancelled."""
        if self._payloads is not None:
            await self._payloads.aclose()  # type: ignore[attr-defined]
        self._ticket.finish(UsageStatus.CANCELLED)
        await self._close_response()

    async def _close_response(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            await response.aclose()
