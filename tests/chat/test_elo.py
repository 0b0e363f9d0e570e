"""Elo ranking from arena votes, without a database."""

from __future__ import annotations

import pytest

from portal.chat import elo


def test_a_win_moves_sixteen_points_between_equal_models():
    standings = elo.rank([("m1", "m2", "a")])
    ratings = {s.model: s.rating for s in standings}
    assert ratings == {"m1": pytest.approx(1016.0), "m2": pytest.approx(984.0)}
    assert [s.model for s in standings] == ["m1", "m2"]


def test_consistent_winner_ranks_first_with_counts():
    votes = [("good", "bad", "a"), ("bad", "good", "b"), ("good", "mid", "a"), ("mid", "bad", "a")]
    standings = elo.rank(votes)
    assert [s.model for s in standings] == ["good", "mid", "bad"]
    good = standings[0]
    assert (good.votes, good.wins, good.losses, good.ties) == (3, 3, 0, 0)
    assert standings[-1].losses == 3


def test_tie_and_both_bad_pull_ratings_together():
    after_win = {s.model: s.rating for s in elo.rank([("x", "y", "a")])}
    after_tie = {s.model: s.rating for s in elo.rank([("x", "y", "a"), ("x", "y", "tie")])}
    after_bad = {s.model: s.rating for s in elo.rank([("x", "y", "a"), ("x", "y", "both_bad")])}
    assert after_win["x"] > after_tie["x"] > 1000 > after_tie["y"] > after_win["y"]
    assert after_bad == pytest.approx(after_tie)


def test_ratings_are_zero_sum_and_ignore_self_battles_and_unknown_choices():
    votes = [("a1", "b1", "a"), ("b1", "c1", "tie"), ("c1", "a1", "b"), ("a1", "a1", "a"), ("a1", "b1", "?")]
    standings = elo.rank(votes)
    assert sum(s.rating for s in standings) == pytest.approx(3000.0)
    assert sum(s.votes for s in standings) == 6


def test_upset_win_earns_more_than_expected_win():
    favourite, underdog = 1200.0, 1000.0
    assert elo.expected_score(favourite, underdog) == pytest.approx(0.7597, abs=1e-4)
    assert elo.expected_score(underdog, favourite) == pytest.approx(1 - 0.7597, abs=1e-4)
