"""Rank models from arena votes with online Elo, as the LMSYS arena first did.

Pure functions over plain tuples so that the ranking is tested without a database.
A tie and a "both bad" verdict both score half a point to each side: neither
model showed itself better, which is all that a pairwise rating can use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

INITIAL_RATING = 1000.0
K_FACTOR = 32.0
SCORES = {"a": 1.0, "b": 0.0, "tie": 0.5, "both_bad": 0.5}


@dataclass
class Standing:
    """One model's row on the leaderboard."""

    model: str
    rating: float = INITIAL_RATING
    votes: int = 0
    wins: int = 0
    losses: int = 0
    ties: int = 0
    opponents: set[str] = field(default_factory=set)


def expected_score(rating: float, other: float) -> float:
    """Return the probability Elo gives `rating` of beating `other`."""
    return 1.0 / (1.0 + 10 ** ((other - rating) / 400.0))


def _tally(standing: Standing, score: float, opponent: str) -> None:
    standing.votes += 1
    standing.opponents.add(opponent)
    if score == 1.0:
        standing.wins += 1
    elif score == 0.0:
        standing.losses += 1
    else:
        standing.ties += 1


def rank(votes: Iterable[tuple[str, str, str]], *, k_factor: float = K_FACTOR) -> list[Standing]:
    """Return standings, best first, from (model_a, model_b, choice) votes in time order."""
    table: dict[str, Standing] = {}
    for model_a, model_b, choice in votes:
        if model_a == model_b or choice not in SCORES:
            continue
        a = table.setdefault(model_a, Standing(model_a))
        b = table.setdefault(model_b, Standing(model_b))
        score_a = SCORES[choice]
        expected_a = expected_score(a.rating, b.rating)
        a.rating, b.rating = (
            a.rating + k_factor * (score_a - expected_a),
            b.rating + k_factor * ((1.0 - score_a) - (1.0 - expected_a)),
        )
        _tally(a, score_a, model_b)
        _tally(b, 1.0 - score_a, model_a)
    return sorted(table.values(), key=lambda s: (-s.rating, s.model))
