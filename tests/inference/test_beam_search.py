"""Beam search on the transformers engine: the beams equal transformers' own `generate(num_beams=...)`.

The request leaves the continuous batch and runs alone in the batch thread;
requests already generating wait for it and then go on.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from inference.engines.base import BeamSearch, GenerationRequest
from inference.sampling import SamplingParams
from tests.inference.conftest import chat_request, collect

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_beams_equal_transformers_generate_with_num_beams(chat_engine, reference_model):
    request = chat_request(chat_engine, "beam-1", "Name a color.", max_tokens=10, temperature=0)
    beams = await chat_engine.beam_search(request, BeamSearch(width=4, n=2, length_penalty=1.0))
    ids = torch.tensor([request.prompt_token_ids])
    with torch.inference_mode():
        expected = reference_model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            num_beams=4,
            num_return_sequences=2,
            max_new_tokens=10,
            do_sample=False,
            eos_token_id=sorted(chat_engine.batcher.stop_ids),
            pad_token_id=chat_engine.tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
    stops = chat_engine.batcher.stop_ids
    for beam, sequence, score in zip(beams, expected.sequences, expected.sequences_scores, strict=True):
        tokens = [int(t) for t in sequence[ids.shape[1] :]]
        tokens = tokens[: next((i for i, t in enumerate(tokens) if t in stops), len(tokens))]
        assert list(beam.token_ids) == tokens
        assert beam.score == pytest.approx(float(score), abs=1e-4)
    assert beams[0].score >= beams[1].score
    assert beams[0].text == chat_engine.tokenizer.decode(list(beams[0].token_ids), skip_special_tokens=True)


async def test_a_running_generation_goes_on_around_a_beam_search(chat_engine):
    solo, _ = await collect(
        chat_engine, chat_request(chat_engine, "solo", "Count to five.", max_tokens=16, temperature=0)
    )
    running = asyncio.ensure_future(
        collect(
            chat_engine, chat_request(chat_engine, "beside", "Count to five.", max_tokens=16, temperature=0)
        )
    )
    await asyncio.sleep(0.2)
    request = chat_engine.tokenize(chat_engine.render_chat([{"role": "user", "content": "Hi"}]))
    beams = await chat_engine.beam_search(
        GenerationRequest("beam-2", request, SamplingParams(max_tokens=4, temperature=0)),
        BeamSearch(width=2, n=1),
    )
    text, _ = await running
    assert len(beams) == 1
    assert text == solo  # the batch row was paused, not disturbed
