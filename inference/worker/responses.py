"""A generation's answer: one JSON body, or server-sent events, with the choices prompt-major.

Choice `p * n + j` is the j-th choice of prompt `p`: with best_of, the j-th
best of its candidates; in a stream (where best_of above n is refused) its
j-th candidate, so a chunk's `index` is the engine request's. Usage counts
each prompt once and every generated token, as OpenAI and vLLM do.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio

from inference.engines.base import Engine, Usage
from inference.protocol import GenerateCall
from inference.worker.answers import ChoiceText, best, buffers_text, finished_choice
from inference.worker.protocol import Describe, Shape
from inference.worker.serving import Generation, Prompt, engine_failure
from inference.worker.wire import error_json


def describer(engine: Engine) -> Describe:
    return lambda token_id: (engine.token_text(token_id), engine.token_bytes(token_id))


def event(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


async def collect(
    engine: Engine, generation: Generation, shape: Shape, call: GenerateCall, prompts: Sequence[Prompt]
) -> dict[str, Any]:
    """The whole answer once every choice has ended; an engine failure raises (a 5xx)."""
    parts: dict[int, ChoiceText] = {}
    async for index, item in generation.events():
        if isinstance(item, Exception):
            raise engine_failure(item)
        parts.setdefault(index, ChoiceText()).add(item)
    describe = describer(engine)
    width = call.candidates
    body = []
    for p, prompt in enumerate(prompts):
        own = {c: parts[p * width + c] for c in range(width) if p * width + c in parts}
        for j, choice in enumerate(best(own, call.n)):
            index = p * call.n + j
            body.append(finished_choice(shape, call, index, choice, describe, prompt.echo, prompt.echoed))
    return shape.response(body, generation.usage())


def echo_only(shape: Shape, call: GenerateCall, prompts: Sequence[Prompt], describe: Describe) -> list[dict]:
    """`max_tokens: 0` with echo: each prompt n times as a finished choice, its logprobs if asked."""
    choices = []
    for p, prompt in enumerate(prompts):
        logprobs = shape.logprobs(prompt.echoed, describe) if call.params.logprobs is not None else None
        choices += [
            shape.choice(p * call.n + j, prompt.echo, "length", logprobs=logprobs) for j in range(call.n)
        ]
    return choices


async def echo_only_events(
    shape: Shape, call: GenerateCall, choices: list[dict[str, Any]], usage: Usage
) -> AsyncIterator[bytes]:
    """The echo-only answer as a stream: one finished chunk per choice."""
    for choice in choices:
        body = shape.chunk(choice["index"], choice["text"], "length", logprobs=choice["logprobs"])
        if call.include_usage:
            body["usage"] = None
        yield event(body)
    if call.include_usage:
        yield event(shape.usage_chunk(usage))
    yield event("[DONE]")


async def sse(
    engine: Engine,
    generation: Generation,
    shape: Shape,
    call: GenerateCall,
    prompts: Sequence[Prompt],
    stream_interval: int,
) -> AsyncIterator[bytes]:
    """Stream chunks every `stream_interval` tokens; always end with `[DONE]` and close the generation.

    With tools offered, a choice's text is held back and sent when it ends,
    as content or as tool calls (they are read from the whole answer).
    """
    describe = describer(engine)
    held = buffers_text(call)
    offsets = {p * call.n + j: len(prompt.echo) for p, prompt in enumerate(prompts) for j in range(call.n)}

    def chunk(index: int, text: str | None, finish: str | None, role: bool = False, **extra: Any) -> bytes:
        body = shape.chunk(index, text, finish, role=role, **extra)
        if call.include_usage:
            body["usage"] = None
        return event(body)

    def logprobs_of(index: int, part: ChoiceText) -> dict[str, Any] | None:
        if call.params.logprobs is None:
            return None
        return shape.logprobs(part.logprobs, describe, offset=offsets[index])

    try:
        for index in offsets:
            prompt = prompts[index // call.n]
            if shape.chat:
                yield chunk(index, "", None, role=True)
            elif prompt.echo:
                lead = shape.logprobs(prompt.echoed, describe) if call.params.logprobs is not None else None
                yield chunk(index, prompt.echo, None, logprobs=lead)
        pending: dict[int, ChoiceText] = {}
        failed = False
        async for index, item in generation.events():
            if isinstance(item, Exception):
                yield event(error_json(engine_failure(item)))
                failed = True
                break
            part = pending.setdefault(index, ChoiceText())
            part.add(item)
            if item.finish_reason is not None:
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
            elif not held and len(part.parts) >= stream_interval:
                yield chunk(index, part.text, None, logprobs=logprobs_of(index, part))
                offsets[index] += len(part.text)
                pending.pop(index)
        if call.include_usage and not failed:
            yield event(shape.usage_chunk(generation.usage()))
        yield event("[DONE]")
    finally:
        # Shielded: on a client disconnect this runs inside a cancelled scope.
        with anyio.CancelScope(shield=True):
            await generation.close()
