"""The worker's HTTP app: the OpenAI wire format over one engine, plus health, status, abort.

Handlers are thin: parse (protocol), serve (serving), shape (protocol). Every
error a client can cause is a 4xx in OpenAI's error shape; an engine failure
is a 5xx body, or an error event followed by `[DONE]` once a stream started.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from inference.engines.base import Usage
from inference.errors import EngineError, InvalidRequest, WrongTask
from inference.worker.protocol import (
    Draining,
    GenerateCall,
    RequestNotFound,
    Shape,
    encode_vector,
    error_body,
    new_id,
    parse_chat,
    parse_completion,
    parse_embeddings,
)
from inference.worker.serving import (
    Generation,
    WorkerContext,
    add_usage,
    engine_failure,
    prepare_prompt,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


def error_response(exc: EngineError) -> JSONResponse:
    code = getattr(exc, "code", None) or ("queue_full" if exc.status_code == 503 else None)
    body = error_body(str(exc), error_type=exc.error_type, param=getattr(exc, "field", None), code=code)
    headers = {"Retry-After": "1"} if exc.status_code == 503 else None
    return JSONResponse(body, status_code=exc.status_code, headers=headers)


def openai_errors(handler: Handler) -> Handler:
    """Turn every exception into OpenAI's error body; unexpected ones are a logged 500."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except EngineError as exc:
            return error_response(exc)
        except ClientGone:
            return Response(status_code=499)
        except Exception as exc:
            logger.exception("Request failed: %s %s", request.method, request.url.path)
            return error_response(engine_failure(exc))

    return wrapper


async def read_json(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return body


async def until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`, cancelling it if the client disconnects first (then raise ClientGone)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
    if task.cancelled():
        raise ClientGone
    return task.result()


def _context(request: Request) -> WorkerContext:
    return request.app.state.ctx


def _refuse_when_draining(ctx: WorkerContext) -> None:
    if ctx.draining:
        raise Draining("The worker is shutting down; send the request to another worker.")


class GenerationStream(StreamingResponse):
    """An SSE response that always closes its generation, even if the body never started."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        *,
        ctx: WorkerContext,
        generation: Generation,
        headers: dict[str, str],
    ) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.ctx = ctx
        self.generation = generation
        ctx.requests_in_progress += 1  # released when the stream ends, not when headers go

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.ctx.requests_in_progress -= 1
            # Shielded: on a client disconnect this runs inside a cancelled scope.
            with anyio.CancelScope(shield=True):
                await self.generation.close()


async def _generate(request: Request, parse: Callable[[dict[str, Any], list[str]], GenerateCall]) -> Response:
    ctx = _context(request)
    _refuse_when_draining(ctx)
    call = parse(await read_json(request), ctx.served_names)
    if ctx.engine.info.task != "generate":
        raise WrongTask("This model serves embeddings; it does not generate text.", field="model")
    request_id = request.headers.get("x-request-id") or new_id("req")
    if request_id in ctx.active:
        raise InvalidRequest(f"The request id '{request_id}' is already in use.")
    with ctx.track():
        prompt, params = await until_disconnect(request, prepare_prompt(ctx, call))
        generation = Generation(ctx, request_id, prompt, params, call.n)
        await until_disconnect(request, generation.start())
        shape = Shape.for_call(call)
        headers = {"X-Request-Id": request_id}
        if call.stream:
            headers["Cache-Control"] = "no-cache"
            stream = _sse(ctx, generation, shape, call)
            return GenerationStream(stream, ctx=ctx, generation=generation, headers=headers)
        try:
            body = await until_disconnect(request, _collect(generation, shape))
        finally:
            await generation.close()
        return JSONResponse(body, headers=headers)


async def _collect(generation: Generation, shape: Shape) -> dict[str, Any]:
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    usage: Usage | None = None
    async for index, item in generation.events():
        if isinstance(item, Exception):
            raise engine_failure(item)
        texts.setdefault(index, []).append(item.text)
        if item.finish_reason is not None:
            finish[index] = item.finish_reason
            usage = add_usage(usage, item.usage)
    choices = [shape.choice(i, "".join(texts.get(i, [])), finish.get(i)) for i in sorted(texts)]
    return shape.response(choices, usage or Usage(0, 0))


def _event(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


async def _sse(
    ctx: WorkerContext, generation: Generation, shape: Shape, call: GenerateCall
) -> AsyncIterator[bytes]:
    """Stream chunks every `stream_interval` tokens; always end with `[DONE]` and close the generation."""

    def chunk(index: int, text: str | None, finish: str | None, role: bool = False) -> bytes:
        body = shape.chunk(index, text, finish, role=role)
        if call.include_usage:
            body["usage"] = None
        return _event(body)

    try:
        if shape.chat:
            for index in range(call.n):
                yield chunk(index, "", None, role=True)
        pending: dict[int, list[str]] = {}
        usage: Usage | None = None
        failed = False
        async for index, item in generation.events():
            if isinstance(item, Exception):
                exc = engine_failure(item)
                yield _event(error_body(str(exc), error_type=exc.error_type))
                failed = True
                break
            parts = pending.setdefault(index, [])
            parts.append(item.text)
            if item.finish_reason is not None:
                yield chunk(index, "".join(parts), item.finish_reason)
                parts.clear()
                usage = add_usage(usage, item.usage)
            elif len(parts) >= ctx.stream_interval:
                yield chunk(index, "".join(parts), None)
                parts.clear()
        if call.include_usage and not failed:
            yield _event(shape.usage_chunk(usage or Usage(0, 0)))
        yield _event("[DONE]")
    finally:
        # Shielded: on a client disconnect this runs inside a cancelled scope.
        with anyio.CancelScope(shield=True):
            await generation.close()


@openai_errors
async def chat_completions(request: Request) -> Response:
    return await _generate(request, parse_chat)


@openai_errors
async def completions(request: Request) -> Response:
    return await _generate(request, parse_completion)


@openai_errors
async def embeddings(request: Request) -> Response:
    ctx = _context(request)
    _refuse_when_draining(ctx)
    call = parse_embeddings(await read_json(request), ctx.served_names)
    with ctx.track():
        result = await until_disconnect(request, ctx.engine.embed(call.texts))
    data = [
        {"object": "embedding", "index": i, "embedding": encode_vector(vector, call.encoding_format)}
        for i, vector in enumerate(result.vectors)
    ]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return JSONResponse({"object": "list", "data": data, "model": call.model, "usage": usage})


@openai_errors
async def models(request: Request) -> Response:
    ctx = _context(request)
    created = request.app.state.started
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "modelportal",
            "max_model_len": ctx.engine.info.max_model_len,
            "task": ctx.engine.info.task,
        }
        for name in ctx.served_names
    ]
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> Response:
    ctx = _context(request)
    status = "draining" if ctx.draining else "ok"
    return JSONResponse({"status": status, "nonce": ctx.nonce}, status_code=503 if ctx.draining else 200)


async def status(request: Request) -> Response:
    ctx = _context(request)
    stats = ctx.engine.stats()
    info = ctx.engine.info
    return JSONResponse(
        {
            "worker_id": ctx.worker_id,
            "nonce": ctx.nonce,
            "status": "draining" if ctx.draining else "ok",
            "served_names": ctx.served_names,
            "task": info.task,
            "backend": info.backend,
            "device": info.device,
            "max_model_len": info.max_model_len,
            "limits": ctx.limits,
            "in_flight": stats.in_flight,
            "queued": stats.queued,
            "tokens_per_second": stats.tokens_per_second,
            "requests_in_progress": ctx.requests_in_progress,
        }
    )


@openai_errors
async def abort(request: Request) -> Response:
    ctx = _context(request)
    request_id = request.path_params["request_id"]
    generation = ctx.active.get(request_id)
    if generation is None:
        raise RequestNotFound(f"No request '{request_id}' is running on this worker.", field="request_id")
    await generation.abort()
    return JSONResponse({"id": request_id, "aborted": True})


def build_app(ctx: WorkerContext) -> Starlette:
    """Return the ASGI app serving `ctx.engine`; daphne (or a test client) runs it."""
    app = Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/status", status, methods=["GET"]),
            Route("/abort/{request_id:str}", abort, methods=["POST"]),
        ]
    )
    app.state.ctx = ctx
    app.state.started = int(time.time())
    return app
