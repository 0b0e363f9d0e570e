"""Per-request token picking: greedy, top-k, seeds and penalties on hand-made logits."""

from __future__ import annotations

import torch

from inference.engines.logits import TokenPicker, pick_tokens
from inference.sampling import SamplingParams

VOCAB = 8


def _picker(**kwargs) -> TokenPicker:
    return TokenPicker(SamplingParams(**kwargs), prompt_ids=[], vocab_size=VOCAB)


def test_greedy_rows_take_the_argmax_each():
    logits = torch.tensor([[0.0, 3.0, 1.0, 0, 0, 0, 0, 0], [5.0, 0, 0, 0, 0, 0, 0, 1.0]])
    assert pick_tokens(logits, [_picker(temperature=0), _picker(temperature=0)]) == [1, 0]


def test_top_k_one_samples_the_most_likely_token():
    logits = torch.tensor([0.0, 0.5, 2.0, 1.9, 0, 0, 0, 0])
    picker = _picker(temperature=1.5, top_k=1)
    assert {picker.pick(logits) for _ in range(20)} == {2}


def test_top_p_keeps_only_the_head_of_the_distribution():
    logits = torch.tensor([10.0, 9.5, -5, -5, -5, -5, -5, -5])
    picker = _picker(temperature=1.0, top_p=0.5)
    assert {picker.pick(logits) for _ in range(30)} == {0}


def test_same_seed_draws_the_same_tokens_whatever_the_batch_neighbours():
    logits = torch.zeros(VOCAB)
    first = _picker(temperature=1.0, seed=123)
    second = _picker(temperature=1.0, seed=123)
    draws_a = [first.pick(logits) for _ in range(10)]
    pick_tokens(torch.zeros(2, VOCAB), [_picker(temperature=1.0), _picker(temperature=1.0)])
    draws_b = [second.pick(logits) for _ in range(10)]
    assert draws_a == draws_b


def test_frequency_penalty_moves_greedy_away_from_a_repeated_token():
    logits = torch.tensor([2.0, 1.5, 0, 0, 0, 0, 0, 0])
    picker = _picker(temperature=0, frequency_penalty=1.0)
    assert picker.pick(logits) == 0
    picker.record(0)
    assert picker.pick(logits) == 1


def test_repetition_penalty_covers_prompt_tokens():
    logits = torch.tensor([2.0, 1.5, 0, 0, 0, 0, 0, 0])
    picker = TokenPicker(SamplingParams(temperature=0, repetition_penalty=2.0), [0], VOCAB)
    assert picker.pick(logits) == 1
