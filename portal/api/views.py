"""The `/v1` endpoints: thin async views over the gateway (admit, then run or stream)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema

from inference.protocol import CHAT_FIELDS, COMPLETION_FIELDS, EMBEDDING_FIELDS
from portal.api import serializers as s
from portal.api.base import OpenAIView
from portal.api.schema import OpenAIViewSchema, body_schema
from portal.gateway import relay
from portal.gateway.gateway import current
from portal.gateway.prepare import CHAT, COMPLETION, EMBEDDING
from portal.gateway.streaming import ChatStream

ERRORS = {
    code: OpenApiResponse(s.ErrorSerializer, description=text)
    for code, text in {
        400: "Invalid request (a malformed `model` included); `param` names the field.",
        401: "Missing, invalid, revoked or expired API key.",
        403: "This key may not use the model.",
        404: "Unknown model.",
        413: "Body too large.",
        429: "A limit of the key: requests or tokens per minute, requests in flight (Retry-After); "
        "or the request alone exceeds the tokens per minute (`param` max_tokens, no Retry-After).",
        503: "No online worker, or all queues full (Retry-After).",
        504: "The worker timed out.",
    }.items()
}


# What a 400 may still refuse in a body the schema accepts (tests/malformed/schema_hooks.py lists the same).
UNSTATED = (
    "Rules the schema does not state (a 400 names the field): `best_of` at least `n`; no `stream` with "
    "beam search or `best_of` above `n`; `length_penalty` and `early_stopping` only with `use_beam_search`, "
    "which takes no sampling fields, logprobs, tools or structured output; `top_logprobs` needs `logprobs`; "
    "a `tool_choice` other than none needs `tools` and names one of them, once each; one structured-output "
    "field at most, none beside a forced `tool_choice`; arguments of "
    "earlier tool calls are JSON objects. The served model refuses what it cannot do (a `max_tokens` past "
    "its context, more choices than its worker holds at once, structured output or logprobs on an engine "
    "without them)."
)

# One server-sent event of a stream, as an event-stream parser reads it.
EVENT = {
    "type": "object",
    "properties": {
        "data": {"type": "string", "description": "A chunk object's JSON, an error's, or the last: [DONE]."}
    },
    "required": ["data"],
}


def answers(serializer: type) -> dict[Any, Any]:
    """A generation's 200: JSON, or server-sent events (`data: <chunk JSON>` lines) when it streams."""
    return {(200, "application/json"): serializer, (200, "text/event-stream"): EVENT}


class _GenerationView(OpenAIView):
    """A chat or text completion, streamed as server-sent events when `stream` is true."""

    schema = OpenAIViewSchema()
    door = CHAT

    async def post(self, request: HttpRequest) -> HttpResponseBase:
        body = self.read_body(request)
        stream = bool(body.get("stream"))
        prepared = await self.admit(self.door, body, stream=stream)
        if stream:
            return EventStreamResponse(await current().stream(prepared))
        return JsonResponse(await current().run(prepared))


class EventStreamResponse(StreamingHttpResponse):
    """Server-sent events relayed from an opened stream.

    Closing the stream aborts the request on the worker, records its usage and
    settles the limits. A client that disconnects while the events flow cancels
    the generator, whose `finally` closes it; one that leaves before the first
    byte leaves the generator unstarted, so the API handler calls `close_stream`
    once sending is over, whatever happened (a second close does nothing).
    """

    def __init__(self, stream: ChatStream) -> None:
        super().__init__(self._events(stream), content_type="text/event-stream")
        self.close_stream = stream.aclose
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"  # nginx must pass events through at once

    @staticmethod
    async def _events(stream: ChatStream) -> AsyncIterator[bytes]:
        try:
            async for event in stream.sse():
                yield event
        finally:
            await stream.aclose()


# Request examples that succeed as they are on the default install (its two models); Swagger's
# "Try it out" starts from the first, instead of a body generated from the schema's extremes.
CHAT_MODEL, EMBEDDING_MODEL = "smollm2-135m-instruct", "all-minilm-l6-v2"
HELLO = [{"role": "user", "content": "Say hello in French."}]
CHAT_EXAMPLES = [
    OpenApiExample(
        "A question", value={"model": CHAT_MODEL, "messages": HELLO, "max_tokens": 64}, request_only=True
    ),
    OpenApiExample(
        "Streamed",
        value={"model": CHAT_MODEL, "messages": HELLO, "max_tokens": 64, "stream": True},
        request_only=True,
    ),
    OpenApiExample(
        "An answer that follows a JSON schema",
        value={
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": "Which city is the capital of France?"}],
            "max_tokens": 64,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "capital",
                    "schema": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                },
            },
        },
        request_only=True,
    ),
]
COMPLETION_EXAMPLES = [
    OpenApiExample(
        "A prompt to continue",
        value={"model": CHAT_MODEL, "prompt": "The capital of France is", "max_tokens": 16},
        request_only=True,
    ),
]
EMBEDDING_EXAMPLES = [
    OpenApiExample(
        "One text", value={"model": EMBEDDING_MODEL, "input": "The quick brown fox."}, request_only=True
    ),
    OpenApiExample(
        "Several texts",
        value={"model": EMBEDDING_MODEL, "input": ["The quick brown fox.", "A lazy dog."]},
        request_only=True,
    ),
]


class ChatCompletionsView(_GenerationView):
    """OpenAI chat completions."""

    @extend_schema(
        operation_id="create_chat_completion",
        summary="Answer a conversation (chat completion)",
        examples=CHAT_EXAMPLES,
        request={"application/json": body_schema(CHAT_FIELDS)},
        responses={**answers(s.CompletionResponseSerializer), **ERRORS},
        description="OpenAI chat completions; `stream: true` answers with server-sent chunks.\n\n" + UNSTATED,
    )
    async def post(self, request: HttpRequest) -> HttpResponseBase:
        return await super().post(request)


class CompletionsView(_GenerationView):
    """OpenAI (legacy) text completions."""

    door = COMPLETION

    @extend_schema(
        operation_id="create_completion",
        summary="Continue a prompt (legacy text completion)",
        examples=COMPLETION_EXAMPLES,
        request={"application/json": body_schema(COMPLETION_FIELDS)},
        responses={**answers(s.CompletionResponseSerializer), **ERRORS},
        description="OpenAI (legacy) text completions; `stream: true` answers with server-sent chunks.\n\n"
        + UNSTATED
        + " `max_tokens` 0 only with `echo`.",
    )
    async def post(self, request: HttpRequest) -> HttpResponseBase:
        return await super().post(request)


class EmbeddingsView(OpenAIView):
    """Embeddings of a string or a list of strings (OpenAI `/v1/embeddings`)."""

    schema = OpenAIViewSchema()

    @extend_schema(
        operation_id="create_embeddings",
        summary="Embed texts as vectors",
        examples=EMBEDDING_EXAMPLES,
        request={"application/json": body_schema(EMBEDDING_FIELDS)},
        responses={200: s.EmbeddingResponseSerializer, **ERRORS},
    )
    async def post(self, request: HttpRequest) -> HttpResponseBase:
        prepared = await self.admit(EMBEDDING, self.read_body(request), stream=False)
        return JsonResponse(await current().run(prepared))


class ModelsView(OpenAIView):
    """Models with at least one online worker, aliases included (only those this key may use)."""

    @extend_schema(
        operation_id="list_models",
        summary="List the models online",
        responses={200: s.ModelListSerializer, 401: ERRORS[401]},
    )
    async def get(self, request: HttpRequest) -> HttpResponseBase:
        await self.reserve()  # a request like any other for requests per minute
        rows = [row for row in await current().list_models() if self.key.allows(row["id"])]
        return JsonResponse({"object": "list", "data": relay.openai_models(rows)})
