"""RecentUsage: the final usage of finished requests, bounded in count and in time."""

from __future__ import annotations

from inference.engines.base import Usage
from inference.worker.recent import RecentUsage
from tests.fake_clock import Clock


def test_usage_is_kept_for_the_ttl_then_forgotten() -> None:
    clock = Clock()
    recent = RecentUsage(size=10, ttl=120.0, clock=clock)
    recent.remember("r1", Usage(3, 4))
    clock.now = 119.0
    assert recent.get("r1") == Usage(3, 4)
    clock.now = 121.0
    assert recent.get("r1") is None
    assert len(recent) == 0


def test_the_oldest_ids_leave_first_past_the_size_cap() -> None:
    recent = RecentUsage(size=3, ttl=120.0, clock=Clock())
    for i in range(5):
        recent.remember(f"r{i}", Usage(1, i))
    assert len(recent) == 3
    assert [recent.get(f"r{i}") for i in range(5)] == [None, None, Usage(1, 2), Usage(1, 3), Usage(1, 4)]


def test_remembering_an_id_again_renews_it() -> None:
    clock = Clock()
    recent = RecentUsage(size=2, ttl=10.0, clock=clock)
    recent.remember("a", Usage(1, 1))
    recent.remember("b", Usage(1, 2))
    clock.now = 5.0
    recent.remember("a", Usage(1, 3))
    recent.remember("c", Usage(1, 4))  # evicts "b", now the oldest
    assert recent.get("b") is None
    assert recent.get("a") == Usage(1, 3)
    clock.now = 12.0  # "a" was renewed at 5 and lives until 15
    assert recent.get("a") == Usage(1, 3)
