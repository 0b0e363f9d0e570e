"""The worker's HTTP app: the OpenAI wire format over one engine, plus health, status, abort.

Handlers are thin: parse (protocol), serve (serving), shape (protocol). Every
error a client can cause is a 4xx in OpenAI's error shape; an engine failure
is a 5xx body, or an error event followed by `[DONE]` once a stream started.
With a WORKER_TOKEN every route but /health requires it (auth.RequireToken).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from inference.engines.base import BeamSearch, GenerationRequest, Usage
from inference.errors import HandoffRefused, InvalidRequest, WrongTask
from inference.protocol import GenerateCall
from inference.protocol.headers import PREFILL_ONLY
from inference.worker import responses
from inference.worker.auth import RequireToken
from inference.worker.disaggregation import fetch_handoff, prefill_workers, splittable
from inference.worker.metrics import metrics
from inference.worker.protocol import (
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
    Prompt,
    WorkerContext,
    prepare_prompts,
)
from inference.worker.wire import (
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
    _refuse_beyond_capacity(ctx, call)
    with ctx.track():
        params = call.params
        if call.candidates > call.n and params.logprobs is None and not call.beam_search:
            params = replace(params, logprobs=0)  # best_of ranks candidates by their logprobs
        prompts = await until_disconnect(request, prepare_prompts(ctx, call, params))
        headers = {"X-Request-Id": request_id}
        if call.beam_search:
            body = await until_disconnect(request, _beam_search(ctx, request_id, prompts, call))
            return JSONResponse(body, headers=headers)
        if request.headers.get(PREFILL_ONLY):
            return await _prefill_only(request, ctx, call, request_id, prompts)
        if call.echo and params.logprobs is not None:  # the prompts' own logprobs come first
            prompts = await until_disconnect(request, _with_prompt_logprobs(ctx, prompts, params.logprobs))
        shape = Shape.for_call(call)
        if call.stream:
            headers["Cache-Control"] = "no-cache"
        if params.max_tokens == 0:
            return _echo_only(ctx, request_id, call, shape, prompts, headers)
        generation = await _start_generation(request, ctx, call, request_id, prompts, payload)
        if call.stream:
            stream = responses.sse(ctx.engine, generation, shape, call, prompts, ctx.stream_interval)
            return GenerationStream(stream, ctx=ctx, generation=generation, headers=headers)
        try:
            body = await until_disconnect(
                request, responses.collect(ctx.engine, generation, shape, call, prompts)
            )
        finally:
            await generation.close()
        return JSONResponse(body, headers=headers)


def _refuse_beyond_capacity(ctx: WorkerContext, call: GenerateCall) -> None:
    """A 400 for more choices than this worker runs and queues at once: it could never admit them all."""
    capacity = int(ctx.limits.get("max_concurrency", 0)) + int(ctx.limits.get("max_queue", 0))
    wanted = max(1, len(call.prompts)) * (1 if call.beam_search else call.candidates)  # beams: one slot
    if capacity and wanted > capacity:
        raise InvalidRequest(
            f"This request asks for {wanted} choices (prompts x n); this worker runs and queues at most "
            f"{capacity} at once: send fewer prompts a request.",
            field="prompt" if len(call.prompts) > 1 else "n",
        )


async def _with_prompt_logprobs(ctx: WorkerContext, prompts: list[Prompt], top: int) -> list[Prompt]:
    return [replace(p, echoed=tuple(await ctx.engine.prompt_logprobs(p.ids, top))) for p in prompts]


def _echo_only(
    ctx: WorkerContext,
    request_id: str,
    call: GenerateCall,
    shape: Shape,
    prompts: list[Prompt],
    headers: dict[str, str],
) -> Response:
    """`max_tokens: 0` with echo: the prompts (and their logprobs), nothing generated."""
    choices = responses.echo_only(shape, call, prompts, responses.describer(ctx.engine))
    usage = Usage(sum(len(p.ids) for p in prompts), 0)
    ctx.recent.remember(request_id, usage)  # an /abort after the fact still learns the usage
    if call.stream:
        events = responses.echo_only_events(shape, call, choices, usage)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    return JSONResponse(shape.response(choices, usage), headers=headers)


async def _prefill_only(
    request: Request, ctx: WorkerContext, call: GenerateCall, request_id: str, prompts: list[Prompt]
) -> Response:
    """A decode worker's prefill: the engine's hand-off, not an answer."""
    if len(prompts) != 1 or not splittable(ctx, call):
        raise HandoffRefused(
            "This request is not prefilled apart (several prompts, n > 1, beams, echo, or this engine)."
        )
    job = GenerationRequest(request_id, prompts[0].ids, prompts[0].params)
    blob = await until_disconnect(request, ctx.engine.prefill(job))
    ctx.prefills_served += 1
    return Response(blob, media_type="application/octet-stream", headers={"X-Request-Id": request_id})


async def _start_generation(
    request: Request,
    ctx: WorkerContext,
    call: GenerateCall,
    request_id: str,
    prompts: list[Prompt],
    payload: dict[str, Any],
) -> Generation:
    """Start the engine's requests, decoding from a prefill worker's hand-off when the portal paired one."""
    if len(prompts) == 1 and prefill_workers(request) and splittable(ctx, call):
        handoff = await until_disconnect(request, fetch_handoff(ctx, request, request_id, payload))
        if handoff is not None:
            generation = Generation(ctx, request_id, prompts, call.candidates, handoff)
            try:
                await until_disconnect(request, generation.start())
                return generation
            except HandoffRefused as exc:  # the prefill worker runs another model build: prefill here
                logger.warning("Hand-off for %s refused (%s); prefilling here", request_id, exc)
    generation = Generation(ctx, request_id, prompts, call.candidates)
    await until_disconnect(request, generation.start())
    return generation


async def _beam_search(
    ctx: WorkerContext, request_id: str, prompts: list[Prompt], call: GenerateCall
) -> dict[str, Any]:
    """The n best beams of each prompt as choices, prompt-major; every beam returned is billed."""
    beam = BeamSearch(call.candidates, call.n, call.length_penalty, call.early_stopping)
    shape = Shape.for_call(call)
    choices: list[dict[str, Any]] = []
    generated = 0
    for p, prompt in enumerate(prompts):
        rid = request_id if len(prompts) == 1 else f"{request_id}-{p}"
        beams = await ctx.engine.beam_search(GenerationRequest(rid, prompt.ids, prompt.params), beam)
        choices += [
            shape.choice(p * call.n + i, prompt.echo + b.text, b.finish_reason) for i, b in enumerate(beams)
        ]
        generated += sum(len(b.token_ids) for b in beams)
    usage = Usage(sum(len(p.ids) for p in prompts), generated)
    ctx.recent.remember(request_id, usage)  # an /abort after the fact still learns the usage
    return shape.response(choices, usage)


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
    stats = ctx.stats()
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
            "prefix_cache_tokens": stats.prefix_cache_tokens,
            "prefix_cache_hit_rate": stats.prefix_cache_hit_rate,
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
