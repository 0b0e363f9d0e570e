"""The pure dispatch policy, without a database."""

import random
from collections import Counter

import pytest

from registry.services.dispatch import NoWorkerAvailable, WorkerSnapshot, choose_worker, with_prefill_workers


def snap(worker_id: int, **kwargs: object) -> WorkerSnapshot:
    fields: dict = {"max_concurrency": 4, "max_queue": 4, **kwargs}
    return WorkerSnapshot(id=worker_id, identity=f"w{worker_id}", address=f"http://w{worker_id}", **fields)


def test_no_candidates_raises_a_clear_error_instead_of_returning_none():
    with pytest.raises(NoWorkerAvailable, match="No online worker"):
        choose_worker([], "least_inflight")


def test_all_full_workers_raise_no_worker_marked_busy():
    full = [snap(1, in_flight=4, queued=4), snap(2, local_in_flight=8)]
    with pytest.raises(NoWorkerAvailable) as info:
        choose_worker(full, "least_inflight")
    assert info.value.all_full


def test_full_worker_is_skipped():
    chosen = choose_worker([snap(1, in_flight=4, queued=4), snap(2, in_flight=3)], "least_inflight")
    assert chosen.id == 2


def test_least_inflight_prefers_the_least_loaded_by_heartbeat_or_local_count():
    assert choose_worker([snap(1, in_flight=2), snap(2, in_flight=1)], "least_inflight").id == 2
    # The local count is fresher than a heartbeat that still says idle.
    assert choose_worker([snap(1, local_in_flight=3), snap(2, in_flight=1)], "least_inflight").id == 2


def test_least_inflight_spreads_ties_between_idle_workers():
    rng = random.Random(1)
    picks = Counter(choose_worker([snap(1), snap(2)], "least_inflight", rng=rng).id for _ in range(200))
    assert picks[1] > 50
    assert picks[2] > 50


def test_shortest_queue_divides_queue_by_speed():
    slow = snap(1, queued=2, tokens_per_second=10.0)
    fast = snap(2, queued=3, tokens_per_second=100.0)
    assert choose_worker([slow, fast], "shortest_queue").id == 2
    assert choose_worker([snap(1, local_in_flight=1), snap(2, local_in_flight=3)], "shortest_queue").id == 1


def test_lottery_is_weighted_by_measured_speed():
    rng = random.Random(7)
    workers = [snap(1, tokens_per_second=90.0), snap(2, tokens_per_second=10.0)]
    picks = Counter(choose_worker(workers, "lottery", rng=rng).id for _ in range(1000))
    assert 850 < picks[1] < 950


def test_lottery_falls_back_to_admin_speed_when_a_worker_has_no_measure():
    rng = random.Random(3)
    workers = [snap(1, tokens_per_second=0.0, speed=1.0), snap(2, tokens_per_second=50.0, speed=3.0)]
    picks = Counter(choose_worker(workers, "lottery", rng=rng).id for _ in range(1000))
    assert 180 < picks[1] < 320


def test_remote_endpoint_is_never_considered_full():
    remote = snap(1, kind="remote", max_concurrency=1, max_queue=0, local_in_flight=5)
    assert choose_worker([remote], "least_inflight").id == 1


def test_prefill_workers_take_no_request_of_their_own():
    only_prefill = [snap(1, role="prefill")]
    with pytest.raises(NoWorkerAvailable, match="No online worker"):
        choose_worker(only_prefill, "least_inflight")
    assert (
        choose_worker([snap(1, role="prefill"), snap(2, role="decode", in_flight=3)], "least_inflight").id
        == 2
    )


def test_a_decode_worker_is_paired_with_the_least_loaded_prefill_workers_that_have_room():
    candidates = [
        snap(1, role="decode"),
        snap(2, role="prefill", in_flight=3),
        snap(3, role="prefill", in_flight=1),
        snap(4, role="prefill", in_flight=4, queued=4),  # full
        snap(5, role="both"),
    ]
    paired = with_prefill_workers(candidates[0], candidates)
    assert paired.prefill_from == ("http://w3", "http://w2")
    assert with_prefill_workers(candidates[4], candidates).prefill_from == ()  # a both worker prefills itself


def test_a_remote_endpoint_marked_prefill_is_never_paired_and_serves_requests_itself():
    remote = snap(2, kind="remote", role="prefill")
    decode = snap(1, role="decode")
    candidates = [decode, remote, snap(3, role="prefill", in_flight=2)]
    assert with_prefill_workers(decode, candidates).prefill_from == ("http://w3",)
    assert with_prefill_workers(decode, [decode, remote]).prefill_from == ()
    # Its role is ignored: it takes requests like any remote endpoint.
    assert choose_worker([remote], "least_inflight").id == 2


def test_a_remote_endpoint_marked_decode_is_sent_no_prefill_workers():
    remote = snap(1, kind="remote", role="decode")
    assert with_prefill_workers(remote, [remote, snap(2, role="prefill")]).prefill_from == ()
