"""The serving logic between the HTTP layer and the engine: prompts, generations, abort.

One `Generation` is one HTTP request: n engine requests per prompt started
together, merged into one event stream, aborted together. It is always closed
in a `finally`, so a client that leaves or an abort frees the engine's slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from inference.engines.base import Delta, Engine, EngineStats, GenerationRequest, TokenLogprob, Usage
from inference.errors import EngineError, InvalidRequest, PromptTooLong
from inference.protocol import GenerateCall
from inference.sampling import MAX_SEED, SamplingParams
from inference.worker.recent import RecentUsage

logger = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    """What the HTTP app shares across requests: the engine, names and live requests."""

    engine: Engine
    served_names: list[str]
    worker_id: str = ""
    nonce: str = field(default_factory=lambda: uuid.uuid4().hex)
    stream_interval: int = 1
    limits: dict[str, Any] = field(default_factory=dict)
    draining: bool = False  # shutting down: refuse new requests, then exit
    held: bool = False  # drained by an operator: refuse new requests, stay up until resumed
    active: dict[str, Generation] = field(default_factory=dict)
    recent: RecentUsage = field(default_factory=RecentUsage)  # final usage of finished requests
    token: str | None = field(default=None, repr=False)  # WORKER_TOKEN callers must present
    token_fallbacks: tuple[str, ...] = field(default=(), repr=False)  # still accepted while rotating
    requests_in_progress: int = 0
    role: str = "both"  # prefill, decode or both: how the portal pairs this worker
    prefills_served: int = 0  # hand-offs made for decode workers
    handoffs_received: int = 0  # requests decoded from another worker's prefill
    handoff_max_bytes: int = 1 << 30  # HANDOFF_MAX_BYTES: a larger hand-off is not read; prefill here
    # One thread: chat templates and tokenizers stay off the event loop, and a
    # fast tokenizer is never used from two threads at once ("Already borrowed").
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
    )

    def stats(self) -> EngineStats:
        """The engine's figures with the worker's prefix-cache hit rate (heartbeat, /metrics)."""
        return replace(self.engine.stats(), prefix_cache_hit_rate=self.recent.prefix_hit_rate)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count a request as in progress, so draining waits for it."""
        self.requests_in_progress += 1
        try:
            yield
        finally:
            self.requests_in_progress -= 1


@dataclass(frozen=True)
class Prompt:
    """One prompt as the engine gets it, with its own params (max_tokens fitted) and its echoed text."""

    ids: list[int]
    params: SamplingParams
    echo: str = ""  # what `echo` puts before each of its choices' text
    echoed: tuple[TokenLogprob, ...] = ()  # with echo and logprobs: the prompt's own tokens' logprobs


def _render_and_tokenize(engine: Engine, call: GenerateCall) -> list[tuple[list[int], str]]:
    """Each prompt's token ids and the text `echo` returns for it (a token-id prompt is decoded)."""
    if call.messages is not None:
        try:
            tools = call.tools
            offered = list(tools.functions) if tools is not None and tools.choice != "none" else None
            prompt = engine.render_chat(call.messages, offered)
        except Exception as exc:  # a template rejecting the conversation is the client's doing
            raise InvalidRequest(f"The messages cannot be rendered: {exc}", field="messages") from None
        return [(engine.tokenize(prompt), "")]
    rendered = []
    for text in call.prompts:
        if isinstance(text, str):
            rendered.append((engine.tokenize(text), text if call.echo else ""))
        else:
            ids = list(text)
            rendered.append((ids, engine.detokenize(ids) if call.echo else ""))
    return rendered


def fit_params(call: GenerateCall, params: SamplingParams, prompt_tokens: int, limit: int) -> SamplingParams:
    """`params` with max_tokens fitted to the context the prompt leaves; PromptTooLong if it does not fit."""
    room = limit - prompt_tokens
    field = "messages" if call.messages is not None else "prompt"
    if params.max_tokens == 0:  # the prompt alone (echo): it must fit, nothing more
        if room < 0:
            raise PromptTooLong(prompt_tokens, 0, limit, field)
        return params
    if room < 1 or (call.max_tokens_given and params.max_tokens > room):
        raise PromptTooLong(prompt_tokens, params.max_tokens, limit, field)
    if params.max_tokens > room:
        # Not asked for explicitly: the default shrinks to what fits, as vLLM does.
        return replace(params, max_tokens=room)
    return params


async def prepare_prompts(ctx: WorkerContext, call: GenerateCall, params: SamplingParams) -> list[Prompt]:
    """Tokenize (off the event loop) each prompt of `call` and fit `params` to each."""
    loop = asyncio.get_running_loop()
    rendered = await loop.run_in_executor(ctx.executor, _render_and_tokenize, ctx.engine, call)
    limit = ctx.engine.info.max_model_len
    return [Prompt(ids, fit_params(call, params, len(ids), limit), echo) for ids, echo in rendered]


def choice_params(params: SamplingParams, index: int) -> SamplingParams:
    """Choice `index`'s parameters: its own seed (seed + index), so n seeded choices differ and repeat."""
    if params.seed is None or index == 0:
        return params
    return replace(params, seed=(params.seed + index) % MAX_SEED)


_DONE = object()
SETTLE_SECONDS = 2.0  # how long closing waits for the engine's final usage after an abort
ABORT_SETTLE_SECONDS = 1.0  # how long /abort waits for it (the portal gives up on /abort after 2 s)


class Generation:
    """`n` engine requests per prompt for one HTTP request, under the client's request id.

    Engine request `k` is choice `k % n` of prompt `k // n`. It counts what it
    consumed (`usage()`): each prompt once, and the engine's final usage per
    choice, or the tokens streamed so far for a choice that has not finished.
    """

    def __init__(
        self,
        ctx: WorkerContext,
        request_id: str,
        prompts: Sequence[Prompt],
        n: int,
        handoff: bytes | None = None,
    ):
        self.ctx = ctx
        self.request_id = request_id
        jobs = [(prompt, choice) for prompt in prompts for choice in range(n)]
        self.engine_ids = [request_id] if len(jobs) == 1 else [f"{request_id}-{k}" for k in range(len(jobs))]
        self._gens = [
            ctx.engine.generate(GenerationRequest(eid, p.ids, choice_params(p.params, choice), handoff))
            for eid, (p, choice) in zip(self.engine_ids, jobs, strict=True)
        ]
        self._prompt_tokens = sum(len(p.ids) for p in prompts)
        self._first_choices = [k for k, (_, choice) in enumerate(jobs) if choice == 0]  # one per prompt
        self._begun: dict[int, Delta | BaseException] = {}  # each choice's first delta or failure
        self._all_begun = asyncio.Event()
        self._streamed = [0] * len(jobs)  # completion tokens seen per choice
        self._final: dict[int, Usage] = {}  # the engine's usage per finished choice
        self._settled = asyncio.Event()  # every choice has ended (or the generation is closed)
        self._queue: asyncio.Queue[tuple[int, Any]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._refused = False  # start() failed: the client got an error status, not a generation
        ctx.active[request_id] = self

    async def start(self) -> None:
        """Wait until every choice has begun, so admission errors become a status code, not a broken stream.

        The choices run from here on, their deltas queued for `events()`: one
        that ends frees its slot for one still waiting, so a request of more
        choices than the engine runs at once does not wait on itself.
        """
        try:
            self._start_pumps()
            await self._all_begun.wait()
        except BaseException:
            await self.close()
            raise
        failure = next((r for r in self._begun.values() if isinstance(r, BaseException)), None)
        if failure is not None:
            self._refused = True
            await self.close()
            raise failure

    def usage(self) -> Usage:
        """Tokens consumed so far: each prompt once (with what the prefix cache served), every completion."""
        completion = sum(
            self._final[i].completion_tokens if i in self._final else self._streamed[i]
            for i in range(len(self._gens))
        )
        cached = sum(self._final[k].cached_tokens for k in self._first_choices if k in self._final)
        return Usage(self._prompt_tokens, completion, cached)

    async def settled(self, timeout: float = SETTLE_SECONDS) -> None:
        """Wait (bounded) until every choice has ended, e.g. after an abort."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout)

    def _start_pumps(self) -> asyncio.Queue[tuple[int, Any]]:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._tasks = [
                asyncio.ensure_future(self._pump(i, gen, self._queue)) for i, gen in enumerate(self._gens)
            ]
        return self._queue

    async def events(self) -> AsyncIterator[tuple[int, Delta | Exception]]:
        """Yield (choice index, delta or engine error) as the engine produces them."""
        queue = self._start_pumps()
        remaining = len(self._gens)
        while remaining:
            index, item = await queue.get()
            if item is _DONE:
                remaining -= 1
                continue
            yield index, item

    def _begin(self, index: int, first: Delta | BaseException) -> None:
        self._begun.setdefault(index, first)
        if len(self._begun) == len(self._gens):
            self._all_begun.set()

    async def _pump(self, index: int, gen: AsyncIterator[Delta], queue: asyncio.Queue) -> None:
        try:
            async for delta in gen:
                self._record(index, delta)
                self._begin(index, delta)
                await queue.put((index, delta))
                if delta.finish_reason is not None:
                    break
            else:
                raise RuntimeError("The engine ended a generation without a final delta.")
            with contextlib.suppress(Exception):
                await gen.aclose()  # type: ignore[attr-defined]  # ended: free its slot for a waiting choice
        except Exception as exc:
            if index in self._begun:
                logger.exception("Generation %s failed", self.request_id)
            self._begin(index, exc)
            await queue.put((index, exc))
        finally:
            self._begin(index, RuntimeError("The generation was cancelled before it began."))
            # Ended without a final usage (failed, cancelled): count what it streamed.
            self._final.setdefault(index, Usage(self._prompt_tokens, self._streamed[index]))
            if len(self._final) == len(self._gens):
                self._settled.set()
            await queue.put((index, _DONE))

    def _record(self, index: int, delta: Delta) -> None:
        self._streamed[index] += len(delta.token_ids)
        if delta.finish_reason is not None:
            self._final[index] = delta.usage or Usage(self._prompt_tokens, self._streamed[index])

    async def abort(self) -> bool:
        """Ask the engine to stop every unfinished choice; return whether any was unfinished."""
        unfinished = [eid for i, eid in enumerate(self.engine_ids) if i not in self._final]
        for eid in unfinished:
            await self.ctx.engine.abort(eid)
        return bool(unfinished)

    async def close(self) -> None:
        """Abort what is unfinished, keep the final usage and release the engine's generators.

        Safe to call twice. The generation stays in `ctx.active` until its usage
        is in `ctx.recent`, so an abort arriving meanwhile finds one or the other.
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self.abort()
        if self._tasks and not self._refused:  # started: let the engine report the aborted choices' usage
            await self.settled()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for gen in self._gens:
            with contextlib.suppress(Exception):
                await gen.aclose()  # type: ignore[attr-defined]
        if not self._refused:  # also a client gone before the first token: the prompt was read
            self.ctx.recent.remember(self.request_id, self.usage())
        self.ctx.active.pop(self.request_id, None)
        self._settled.set()


def engine_failure(exc: Exception) -> EngineError:
    if isinstance(exc, EngineError):
        return exc
    return EngineError(f"The engine failed: {exc}")
