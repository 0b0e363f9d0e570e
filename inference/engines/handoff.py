"""A prefilled request as the transformers engine hands it from a prefill worker to a decode worker.

One safetensors blob: each layer's key and value rows for the prompt
(1, heads, prompt length, head dim), in the model's dtype, and the sampler's
generator state; the prompt ids, the first token and its logprob ride in the
metadata. safetensors (not pickle) because the bytes cross the network.

The bytes come from another process: `check` holds them to what this model
and prompt need before any of them reaches the batch (a token id past the
vocabulary is a device-side assert on CUDA, which ends every request).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from safetensors.torch import load, save

from inference.engines.base import TokenLogprob
from inference.errors import HandoffRefused

GENERATOR_STATE_SHAPE = torch.Generator().get_state().shape  # the sampler's generator is on the CPU


@dataclass(frozen=True)
class Handoff:
    prompt_ids: list[int]
    first_token: int
    first_logprob: TokenLogprob | None
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # (keys, values) per layer
    generator_state: torch.Tensor  # torch.Generator.get_state() after the first token was drawn


@dataclass(frozen=True)
class Fit:
    """What a hand-off must be to be decoded by this model from this prompt."""

    prompt_ids: list[int]
    layers: int
    rows: tuple[int, int, int, int]  # each key and value tensor: (1, kv heads, prompt length, head dim)
    dtype: torch.dtype
    vocab_size: int  # token ids are 0 to vocab_size - 1


def check(received: Handoff, fit: Fit) -> Handoff:
    """`received` if it fits `fit` exactly; HandoffRefused (the decode worker prefills itself) otherwise."""
    if received.prompt_ids != fit.prompt_ids:
        raise HandoffRefused("The hand-off is for another prompt.")
    if len(received.layers) != fit.layers or any(
        tuple(t.shape) != fit.rows or t.dtype != fit.dtype for pair in received.layers for t in pair
    ):
        raise HandoffRefused(
            f"The hand-off does not fit: {fit.layers} layers of {fit.rows} {fit.dtype} wanted."
        )
    logprob = received.first_logprob
    tokens = [received.first_token]
    if logprob is not None:
        tokens += [logprob.token_id, *(token for token, _ in logprob.top)]
    bad = next((t for t in tokens if not 0 <= t < fit.vocab_size), None)
    if bad is not None:
        raise HandoffRefused(f"The hand-off has token id {bad}; this model's are 0 to {fit.vocab_size - 1}.")
    state = received.generator_state
    if state.dtype != torch.uint8 or state.shape != GENERATOR_STATE_SHAPE:
        raise HandoffRefused("The hand-off's generator state is not a CPU torch.Generator's.")
    return received


def dumps(handoff: Handoff) -> bytes:
    tensors = {"generator": handoff.generator_state.contiguous()}
    for index, (keys, values) in enumerate(handoff.layers):
        tensors[f"k{index}"] = keys.contiguous()
        tensors[f"v{index}"] = values.contiguous()
    logprob = handoff.first_logprob
    metadata = {
        "prompt_ids": json.dumps(handoff.prompt_ids),
        "first_token": str(handoff.first_token),
        "first_logprob": json.dumps(
            None if logprob is None else [logprob.token_id, logprob.logprob, logprob.top]
        ),
    }
    return save(tensors, metadata=metadata)


def loads(data: bytes) -> Handoff:
    """The hand-off in `data`; HandoffRefused when it is not one."""
    try:
        tensors = load(data)
        metadata = _metadata(data)
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        while f"k{len(layers)}" in tensors:
            layers.append((tensors[f"k{len(layers)}"], tensors[f"v{len(layers)}"]))
        logprob = json.loads(metadata["first_logprob"])
        first_logprob = None
        if logprob is not None:
            first_logprob = TokenLogprob(
                int(logprob[0]), float(logprob[1]), tuple((int(t), float(v)) for t, v in logprob[2])
            )
        return Handoff(
            prompt_ids=[int(i) for i in json.loads(metadata["prompt_ids"])],
            first_token=int(metadata["first_token"]),
            first_logprob=first_logprob,
            layers=layers,
            generator_state=tensors["generator"],
        )
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise HandoffRefused(f"Not a prefill hand-off: {exc}") from None
    except Exception as exc:  # safetensors' own errors for a malformed blob
        raise HandoffRefused(f"Not a prefill hand-off: {type(exc).__name__}: {exc}") from None


def _metadata(data: bytes) -> dict[str, str]:
    # The safetensors header: 8 bytes of length, then JSON with "__metadata__".
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return dict(header["__metadata__"])
