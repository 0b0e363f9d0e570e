"""The worker's HTTP app: the OpenAI wire format over one engine, plus health, status, abort.

Handlers are thin: parse (protocol), serve (serving), shape (protocol). Every
error a client can cause is a 4xx in OpenAI's error shape; an engine failure
is a 5xx body, or an error event followed by `[DONE]` once a stream started.
With a WORKER_TOKEN every route but /health requires it (auth.RequireToken).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from inference.engines.base import BeamSearch, GenerationRequest, TokenLogprob, Usage
from inference.errors import HandoffRefused, InvalidRequest, WrongTask
from inference.protocol import GenerateCall
from inference.protocol.headers import PREFILL_ONLY
from inference.sampling import SamplingParams
from inference.worker.answers import ChoiceText, best, buffers_text, echo_prefix, finished_choice
from inference.worker.auth import RequireToken
from inference.worker.disaggregation import fetch_handoff, prefill_workers, splittable
from inference.worker.metrics import metrics
from inference.worker.protocol import (
    Describe,
    Draining,
    RequestNotFound,
    Served,
    Shape,
    encode_vector,
    parse_chat,
    parse_completion,
    parse_embeddings,
    usage_dict,
)
from inference.worker.serving import (
    ABORT_SETTLE_SECONDS,
    Generation,
    WorkerContext,
    add_usage,
    engine_failure,
    prepare_prompt,
)
from inference.worker.wire import (
    error_json,
    openai_errors,
    read_json,
    request_id_of,
    until_disconnect,
)

logger = logging.getLogger(__name__)


def _context(request: Request) -> WorkerContext:
    return request.app.state.ctx


def _served(ctx: WorkerContext) -> Served:
    return Served(ctx.served_names, ctx.engine.info.max_model_len)


def _refuse_when_draining(ctx: WorkerContext) -> None:
    if ctx.draining:
        raise Draining("The worker is shutting down; send the request to another worker.")
    if ctx.held:
        raise Draining("The worker is drained by an operator; send the request to another worker.")


def _serving_status(ctx: WorkerContext) -> str:
    return "draining" if ctx.draining else "drained" if ctx.held else "ok"


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


async def _generate(request: Request, parse: Callable[[dict[str, Any], Served], GenerateCall]) -> Response:
    ctx = _context(request)
    _refuse_when_draining(ctx)
    request_id = request_id_of(request)
    payload = await read_json(request)
    call = parse(payload, _served(ctx))
    if ctx.engine.info.task != "generate":
        raise WrongTask("This model serves embeddings; it does not generate text.", field="model")
    if request_id in ctx.active:
        raise InvalidRequest(f"The request id '{request_id}' is already in use.")
    refuse_unserved(call)
    with ctx.track():
        prompt, params = await until_disconnect(request, prepare_prompt(ctx, call))
        if call.beam_search:
            body = await until_disconnect(request, _beam_search(ctx, request_id, prompt, params, call))
            return JSONResponse(body, headers={"X-Request-Id": request_id})
        if call.candidates > call.n and params.logprobs is None:
            params = replace(params, logprobs=0)  # best_of ranks candidates by their logprobs
        if request.headers.get(PREFILL_ONLY):
            return await _prefill_only(request, ctx, call, GenerationRequest(request_id, prompt, params))
        echoed: list[TokenLogprob] = []
        if call.echo and params.logprobs is not None:  # the prompt's own logprobs come first
            echoed = await until_disconnect(request, ctx.engine.prompt_logprobs(prompt, params.logprobs))
        job = GenerationRequest(request_id, prompt, params)
        generation = await _start_generation(request, ctx, call, job, payload)
        shape = Shape.for_call(call)
        headers = {"X-Request-Id": request_id}
        if call.stream:
            headers["Cache-Control"] = "no-cache"
            stream = _sse(ctx, generation, shape, call, echoed)
            return GenerationStream(stream, ctx=ctx, generation=generation, headers=headers)
        try:
            body = await until_disconnect(request, _collect(ctx, generation, shape, call, echoed))
        finally:
            await generation.close()
        return JSONResponse(body, headers=headers)


async def _prefill_only(
    request: Request, ctx: WorkerContext, call: GenerateCall, job: GenerationRequest
) -> Response:
    """A decode worker's prefill: the engine's hand-off, not an answer."""
    if not splittable(ctx, call):
        raise HandoffRefused("This request is not prefilled apart (n > 1, beams, echo, or this engine).")
    blob = await until_disconnect(request, ctx.engine.prefill(job))
    ctx.prefills_served += 1
    return Response(blob, media_type="application/octet-stream", headers={"X-Request-Id": job.request_id})


async def _start_generation(
    request: Request, ctx: WorkerContext, call: GenerateCall, job: GenerationRequest, payload: dict[str, Any]
) -> Generation:
    """Start the engine's requests, decoding from a prefill worker's hand-off when the portal paired one."""
    request_id, prompt, params = job.request_id, job.prompt_token_ids, job.params
    if prefill_workers(request) and splittable(ctx, call):
        handoff = await until_disconnect(request, fetch_handoff(ctx, request, request_id, payload))
        if handoff is not None:
            generation = Generation(ctx, request_id, prompt, params, call.candidates, handoff)
            try:
                await until_disconnect(request, generation.start())
                return generation
            except HandoffRefused as exc:  # the prefill worker runs another model build: prefill here
                logger.warning("Hand-off for %s refused (%s); prefilling here", request_id, exc)
    generation = Generation(ctx, request_id, prompt, params, call.candidates)
    await until_disconnect(request, generation.start())
    return generation


def refuse_unserved(call: GenerateCall) -> None:
    """Parameters the parser knows that this worker does not serve: a 400 naming each."""
    if call.echo and call.prompt is None:
        raise InvalidRequest("'echo' needs a text prompt, not token ids.", field="echo")


async def _beam_search(
    ctx: WorkerContext, request_id: str, prompt: list[int], params: SamplingParams, call: GenerateCall
) -> dict[str, Any]:
    """The n best beams as choices; every beam returned is billed."""
    beam = BeamSearch(call.candidates, call.n, call.length_penalty, call.early_stopping)
    beams = await ctx.engine.beam_search(GenerationRequest(request_id, prompt, params), beam)
    shape = Shape.for_call(call)
    choices = [shape.choice(i, echo_prefix(call) + b.text, b.finish_reason) for i, b in enumerate(beams)]
    usage = Usage(len(prompt), sum(len(b.token_ids) for b in beams))
    ctx.recent.remember(request_id, usage)  # an /abort after the fact still learns the usage
    return shape.response(choices, usage)


def _describe(ctx: WorkerContext) -> Describe:
    engine = ctx.engine
    return lambda token_id: (engine.token_text(token_id), engine.token_bytes(token_id))


async def _collect(
    ctx: WorkerContext,
    generation: Generation,
    shape: Shape,
    call: GenerateCall,
    echoed: Sequence[TokenLogprob] = (),
) -> dict[str, Any]:
    choices: dict[int, ChoiceText] = {}
    usage: Usage | None = None
    async for index, item in generation.events():
        if isinstance(item, Exception):
            raise engine_failure(item)
        choices.setdefault(index, ChoiceText()).add(item)
        if item.finish_reason is not None:
            usage = add_usage(usage, item.usage)
    describe = _describe(ctx)
    picked = best(choices, call.n)
    body = [finished_choice(shape, call, i, choice, describe, echoed) for i, choice in enumerate(picked)]
    return shape.response(body, usage or Usage(0, 0))


def _event(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


async def _sse(
    ctx: WorkerContext,
    generation: Generation,
    shape: Shape,
    call: GenerateCall,
    echoed: Sequence[TokenLogprob] = (),
) -> AsyncIterator[bytes]:
    """Stream chunks every `stream_interval` tokens; always end with `[DONE]` and close the generation.

    With tools offered, a choice's text is held back and sent when it ends,
    as content or as tool calls (they are read from the whole answer).
    """
    describe = _describe(ctx)
    held = buffers_text(call)

    def chunk(index: int, text: str | None, finish: str | None, role: bool = False, **extra: Any) -> bytes:
        body = shape.chunk(index, text, finish, role=role, **extra)
        if call.include_usage:
            body["usage"] = None
        return _event(body)

    def logprobs_of(index: int, part: ChoiceText) -> dict[str, Any] | None:
        if call.params.logprobs is None:
            return None
        return shape.logprobs(part.logprobs, describe, offset=offsets[index])

    try:
        prefix = echo_prefix(call)
        for index in range(call.n):
            if shape.chat:
                yield chunk(index, "", None, role=True)
            elif prefix:
                lead = shape.logprobs(echoed, describe) if call.params.logprobs is not None else None
                yield chunk(index, prefix, None, logprobs=lead)
        pending: dict[int, ChoiceText] = {}
        offsets = dict.fromkeys(range(call.n), len(prefix))
        usage: Usage | None = None
        failed = False
        async for index, item in generation.events():
            if isinstance(item, Exception):
                yield _event(error_json(engine_failure(item)))
                failed = True
                break
            part = pending.setdefault(index, ChoiceText())
            part.add(item)
            if item.finish_reason is not None:
                usage = add_usage(usage, item.usage)
                if held:
                    whole = finished_choice(shape, call, index, part, describe)
                    message = whole["message"]
                    yield chunk(
                        index,
                        message["content"],
                        None,
                        logprobs=whole["logprobs"],
                        tool_calls=message.get("tool_calls"),
                    )
                    yield chunk(index, None, whole["finish_reason"])
                else:
                    yield chunk(index, part.text, item.finish_reason, logprobs=logprobs_of(index, part))
                pending.pop(index)
            elif not held and len(part.parts) >= ctx.stream_interval:
                yield chunk(index, part.text, None, logprobs=logprobs_of(index, part))
                offsets[index] += len(part.text)
                pending.pop(index)
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
    call = parse_embeddings(await read_json(request), _served(ctx))
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
    status = _serving_status(ctx)
    return JSONResponse({"status": status, "nonce": ctx.nonce}, status_code=200 if status == "ok" else 503)


async def status(request: Request) -> Response:
    ctx = _context(request)
    stats = ctx.engine.stats()
    info = ctx.engine.info
    return JSONResponse(
        {
            "worker_id": ctx.worker_id,
            "nonce": ctx.nonce,
            "status": _serving_status(ctx),
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
            "role": ctx.role,
            "prefills_served": ctx.prefills_served,
            "handoffs_received": ctx.handoffs_received,
        }
    )


@openai_errors
async def abort(request: Request) -> Response:
    """Stop a request and answer the usage it consumed, even if it finished just before.

    `aborted` says whether something was still generating. A request that
    ended recently (the portal dropped its stream first) answers its final
    usage with `aborted: false`; an id never seen (or long gone) is a 404.
    """
    ctx = _context(request)
    request_id = request.path_params["request_id"]
    generation = ctx.active.get(request_id)
    aborted, usage = False, ctx.recent.get(request_id)
    if generation is not None:
        aborted = await generation.abort()
        await generation.settled(ABORT_SETTLE_SECONDS)
        usage = generation.usage()
    if usage is None:
        raise RequestNotFound(f"No request '{request_id}' ran on this worker lately.", field="request_id")
    return JSONResponse({"id": request_id, "aborted": aborted, "usage": usage_dict(usage)})


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
            Route("/metrics", metrics, methods=["GET"]),
            Route("/abort/{request_id:str}", abort, methods=["POST"]),
        ],
        middleware=[Middleware(RequireToken, token=ctx.token, fallbacks=ctx.token_fallbacks)],
    )
    app.state.ctx = ctx
    app.state.started = int(time.time())
    return app
