"""The prefills kept between scoring a prompt and generating from it: a token budget, oldest first."""

from __future__ import annotations

import torch

from inference.engines.prefills import KeptPrefills, Prefill


def test_kept_prefills_stay_within_their_token_budget_oldest_first():
    kept = KeptPrefills(budget=5)
    prefill = Prefill(cache=None, last_logits=torch.zeros(1))
    kept.keep([1, 2], prefill)
    kept.keep([3, 4], prefill)
    kept.keep([5, 6], prefill)  # 6 tokens > 5: the oldest goes
    assert kept.take([1, 2]) is None
    assert kept.take([3, 4]) is prefill
    kept.keep(list(range(6)), prefill)  # larger than the whole budget: not kept
    assert kept.take(list(range(6))) is None
    assert kept.take([5, 6]) is prefill
    assert kept.take([5, 6]) is None
