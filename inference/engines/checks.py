"""What a generation request must satisfy before it takes a slot: the model's own facts.

Checked by every engine on the event loop, before admission, so a request
that would crash the batch (a token id past the vocabulary indexes outside
the embedding table) is refused alone with a 400 naming the field.
"""

from __future__ import annotations

from collections.abc import Iterable

from inference.engines.base import GenerationRequest, ModelInfo
from inference.errors import InvalidRequest, PromptTooLong


def check_generation(request: GenerationRequest, info: ModelInfo) -> None:
    """Raise InvalidRequest naming the field unless `request` fits `info`'s context and vocabulary."""
    prompt = request.prompt_token_ids
    if not prompt:
        raise InvalidRequest("The prompt is empty.", field="prompt")
    if len(prompt) + request.params.max_tokens > info.max_model_len:
        raise PromptTooLong(len(prompt), request.params.max_tokens, info.max_model_len)
    if info.vocab_size is not None:
        check_token_ids(prompt, info.vocab_size, "prompt")
        check_token_ids(request.params.stop_token_ids, info.vocab_size, "stop_token_ids")


def check_token_ids(ids: Iterable[int], vocab_size: int, field: str) -> None:
    bad = next((t for t in ids if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise InvalidRequest(
            f"'{field}' has token id {bad}; this model's token ids are 0 to {vocab_size - 1}.", field=field
        )
