"""The OpenAI wire format, parsed once for every door: worker, `/v1`, signed API, chat page.

No Django and no Starlette here, so the worker and the portal share it and it
is tested on its own.
"""

from inference.protocol.requests import (
    CHAT_FIELDS,
    COMPLETION_FIELDS,
    EMBEDDING_FIELDS,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    GenerateCall,
    GenerateRequest,
    parse_chat,
    parse_completion,
    parse_embedding,
    request_schema,
)

__all__ = [
    "CHAT_FIELDS",
    "COMPLETION_FIELDS",
    "EMBEDDING_FIELDS",
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "GenerateCall",
    "GenerateRequest",
    "parse_chat",
    "parse_completion",
    "parse_embedding",
    "request_schema",
]
