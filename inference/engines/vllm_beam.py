"""Beam search on vLLM, through whichever API the installed release has.

- up to 0.11.0: `EngineClient.beam_search(prompt, request_id, params)`, a method of the engine;
- 0.11.1 to 0.21: only inside vLLM's OpenAI serving classes, which need a whole server: refused (400);
- since 0.22: `BeamSearchOnlineMixin.beam_search(prompt, request_id, params)`
  (`vllm/entrypoints/generate/beam_search/online.py`), which needs only an `engine_client` and a
  `renderer`, both of which `AsyncLLM` has: a small adapter runs it on our engine.

Whatever a release ranks by (0.27 and before count the prompt in the length, 0.34 does not), each
beam is scored as our contract says, as transformers does: its cumulative logprob divided by the
number of generated tokens (an ending EOS included) to the power `length_penalty`; the beams are
then ranked again by that score.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from inference.engines.base import Beam, BeamSearch, GenerationRequest
from inference.engines.vllm_mapping import token_prompt
from inference.errors import EngineError, InvalidRequest
from inference.sampling import SamplingParams

Search = Callable[[Any, str, Any], AsyncIterator[Any]]


def vllm_beam_kwargs(params: SamplingParams, beam: BeamSearch) -> dict[str, Any]:
    """BeamSearchParams fields: vLLM beams of `beam.width` (vLLM has no early stopping)."""
    return {
        "beam_width": beam.width,
        "max_tokens": params.max_tokens,
        "ignore_eos": params.ignore_eos,
        "temperature": params.temperature,
        "length_penalty": beam.length_penalty,
    }


def beam_score(cumulative_logprob: float, generated: int, length_penalty: float) -> float:
    """The contract's score: logprob sum / length ** penalty, the length counting an ending EOS."""
    return cumulative_logprob / (max(generated, 1) ** length_penalty)


def ranked_beams(outputs: Sequence[Any], beam: BeamSearch) -> list[Beam]:
    """vLLM's finished beams (`CompletionOutput`s) as our `beam.n` best, best first.

    A beam that ended on EOS has finish_reason "stop" and leaves the EOS out of `token_ids`
    (`include_stop_str_in_output` is off), but its logprob is in the sum: it counts in the length.
    """
    beams = []
    for output in outputs:
        if output.finish_reason == "error":
            raise EngineError("vLLM's beam search failed on this request.")
        ended = output.finish_reason == "stop"
        generated = len(output.token_ids) + int(ended)
        score = beam_score(float(output.cumulative_logprob or 0.0), generated, beam.length_penalty)
        beams.append(Beam(output.text, tuple(output.token_ids), score, output.finish_reason or "length"))
    beams.sort(key=lambda b: b.score, reverse=True)
    return beams[: beam.n]


def online_mixin() -> type | None:
    """vLLM's beam-search mixin (0.22 and later); None on releases without it."""
    try:
        from vllm.entrypoints.generate.beam_search.online import BeamSearchOnlineMixin
    except ImportError:
        return None
    return BeamSearchOnlineMixin


@functools.cache
def _adapter_class(mixin: type) -> type:
    return type("EngineBeamSearch", (mixin,), {"__doc__": "vLLM's beam-search mixin over one AsyncLLM."})


def searcher(engine: Any) -> Search | None:
    """The beam search this release runs on `engine`; None where it has none an engine can call."""
    mixin = online_mixin()
    if mixin is None:
        return getattr(engine, "beam_search", None)
    adapter = _adapter_class(mixin)()
    adapter.engine_client = engine  # what the mixin generates through, one token per step
    adapter.renderer = engine.renderer  # its tokenizer: the EOS id and the beams' text
    return adapter.beam_search


async def run_beam_search(engine: Any, request: GenerationRequest, beam: BeamSearch) -> list[Beam]:
    """The `beam.n` best beams for `request`, scored and ranked as our contract says."""
    if beam.early_stopping:  # refused, never ignored: vLLM's beam search has no such option
        raise InvalidRequest("vLLM's beam search has no early stopping.", field="early_stopping")
    search = searcher(engine)
    if search is None:
        raise InvalidRequest(
            "This vLLM release (0.11.1 to 0.21) has no beam search an engine can call; "
            "vLLM 0.22 or later has.",
            field="use_beam_search",
        )
    from vllm.sampling_params import BeamSearchParams

    params = BeamSearchParams(**vllm_beam_kwargs(request.params, beam))
    final = None
    async for output in search(token_prompt(request.prompt_token_ids), request.request_id, params):
        final = output
    if final is None:
        raise EngineError("vLLM's beam search returned no beams.")
    return ranked_beams(final.outputs, beam)
