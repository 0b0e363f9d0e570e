"""The engines' tokens-per-second figure: a sliding window whose memory stays bounded."""

from __future__ import annotations

from inference.engines.rate import TokenRate
from tests.fake_clock import Clock


def test_tokens_are_averaged_over_the_last_ten_seconds() -> None:
    clock = Clock()
    rate = TokenRate(window_s=10, clock=clock)
    assert rate.per_second() == 0
    for _ in range(10):  # 30 tokens a second for ten seconds
        rate.add(10)
        rate.add(20)
        clock.now += 1
    clock.now -= 0.5  # still within the tenth second
    assert rate.per_second() == 30
    clock.now += 5.5  # five of the ten seconds have left the window
    assert rate.per_second() == 15
    clock.now += 100
    assert rate.per_second() == 0


def test_a_rate_nobody_reads_keeps_only_its_window() -> None:
    # A worker without a heartbeat never asks for the rate; tokens still arrive for hours.
    clock = Clock()
    rate = TokenRate(window_s=10, clock=clock)
    for _ in range(100_000):  # 64 tokens a second (1/64 s is exact in binary)
        clock.now += 1 / 64
        rate.add(1)
    assert len(rate._recent) == 641  # ten seconds of tokens, both ends included
    assert rate.per_second() == 64.1
