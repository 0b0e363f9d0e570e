"""deploy/local-cluster.sh: the production shape on loopback (nginx, two portals, two SmolLM2 workers,
a MiniLM worker, the task cluster) serves through nginx, survives faults under a streaming load, and
`down` stops it all.

One cluster serves the module (its start is the costly part): the first test checks what `up`
started, the fault tests each leave it whole again, the last stops it with `down`.

- kill -9 of a worker: requests that start after the kill go to the other
  worker; those the dead worker held end with a clean error event; none hangs;
  the dead worker shows offline within three heartbeat intervals; restarted, it
  serves again.
- kill -9 of a portal, 128 requests: nginx routes around it; only requests
  that portal held fail; every request the client saw finish has exactly one
  usage record (the record is in the shared Redis stream before [DONE]).
- Redis killed with -9 and restarted (a private redis-server, append-only):
  no request fails, no usage record is lost.
- PostgreSQL cut for 10 s (a relay in front of it drops and refuses every
  connection): every request is served (one whose workers expired meanwhile
  waits in the queue while they beat again, every second until it lands),
  nothing hangs, the workers beat again, no usage record is lost.

Each report counts requests ok / failed / retried (moved to another worker),
p95 latency before and after the fault, and usage records lost.

The figures are written to test-artifacts/faults/.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import httpx2
import openai
import psycopg
import pytest
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.cluster import Cluster, cluster_env, proc_gone, run, up
from tests.deploy.outages import PostgresCut, PrivateRedis
from tests.processes import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
MODEL = "smollm2-135m-instruct"
REQUESTS, CONCURRENCY = 64, 8  # the victim is killed once a quarter of the requests have finished
TOKENS = 16  # a request's stream: its victims are cut mid-stream all the same
PORTAL_KILL_REQUESTS = 128
POSTGRES_CUT_REQUESTS = 160  # a load long enough that the 10 s cut expires the workers' heartbeats mid-load
CLAIM_SECONDS = 5  # USAGE_CLAIM_SECONDS: a live portal takes over the dead one's unwritten records
BOUND_SECONDS = 60  # no request may take longer, fault or not
HEARTBEAT_SECONDS = 5.0  # the default HEARTBEAT_INTERVAL
REDIS_DOWN_SECONDS = 3.0
POSTGRES_DOWN_SECONDS = 10.0
ARTIFACTS = REPO_ROOT / "test-artifacts" / "faults"


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def postgres_cut() -> Iterator[PostgresCut]:
    relay = PostgresCut()
    relay.start()
    yield relay
    relay.stop()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, private_redis: PrivateRedis, postgres_cut: PostgresCut
) -> Iterator[Cluster]:
    """One cluster for the module, on a Redis and a path to PostgreSQL that the tests may break.

    Each test leaves it whole again (it restarts what it killed).
    """
    env = cluster_env(tmp_path_factory.mktemp("faults") / "cluster", "portal_cluster_faults")
    env["USAGE_CLAIM_SECONDS"] = str(CLAIM_SECONDS)
    env["CLUSTER_REDIS_URL"] = private_redis.url
    env["PG_URL"] = f"postgres://postgres@127.0.0.1:{postgres_cut.port}"
    try:
        yield up(env)
    finally:
        run(env, "down", timeout=120)


@dataclass
class Outcome:
    started: float
    request_id: str = ""
    ended: float = 0.0
    ok: bool = False
    error: str = ""  # the error event's message, when the stream carried one
    clean: bool = False  # ended with [DONE], an error event or an HTTP error answer: never cut off


async def stream_one(client: httpx2.AsyncClient, key: str, n: int) -> Outcome:
    outcome = Outcome(started=time.monotonic())
    body = {
        "model": MODEL, "stream": True, "max_tokens": TOKENS, "temperature": 0.8, "seed": n,
        "messages": [{"role": "user", "content": f"Tell me fact number {n} about the sea."}],
    }  # fmt: skip
    try:
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response:
            outcome.request_id = response.headers.get("X-Request-Id", "")
            if response.status_code != 200:
                outcome.error = (await response.aread()).decode()[:300]
                outcome.clean = True
                return outcome
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    outcome.clean = True
                    outcome.ok = not outcome.error
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    outcome.error = str(chunk["error"].get("message", chunk["error"]))
                    outcome.clean = True
    except httpx2.HTTPError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        outcome.ended = time.monotonic()
    return outcome


def fleet(admin: httpx2.Client) -> list[dict[str, Any]]:
    return admin.get("/admin/console/fleet.json").json()["workers"]


def worker_at(admin: httpx2.Client, port: str) -> dict[str, Any]:
    return next(w for w in fleet(admin) if w["address"].endswith(f":{port}"))


def counted(cluster: Cluster, family_name: str, **labels: str) -> float:
    """The sum of a counter's samples with `labels`, from /metrics (every portal of the host)."""
    token = cluster.settings["METRICS_TOKEN"]
    text = httpx2.get(
        f"{cluster.base}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == family_name
        for sample in family.samples
        if sample.name == f"{family_name}_total" and labels.items() <= sample.labels.items()
    )


def served_by(cluster: Cluster, identity: str) -> float:
    return counted(cluster, "portal_requests", worker=identity)


def retried(cluster: Cluster) -> float:
    """Requests moved to another worker, so far (portal_dispatch_failovers)."""
    return counted(cluster, "portal_dispatch_failovers")


def usage_records(cluster: Cluster, finished: list[str]) -> dict[str, int]:
    """Of the requests the client saw finish: how many have no usage record, how many more than one.

    What a dead portal read from the stream and had not written is claimed after CLAIM_SECONDS.
    """

    def records() -> list[tuple[str, int]]:
        with psycopg.connect(cluster.settings["DATABASE_URL"]) as db:
            return db.execute(
                "SELECT request_id, count(*) FROM registry_usagerecord WHERE request_id = ANY(%s) GROUP BY 1",
                (finished,),
            ).fetchall()

    deadline = time.monotonic() + CLAIM_SECONDS + 20
    while len(rows := records()) < len(finished) and time.monotonic() < deadline:
        time.sleep(0.5)
    return {
        "usage_records_lost": len(set(finished) - {request_id for request_id, _ in rows}),
        "usage_records_duplicated": sum(count > 1 for _, count in rows),
    }


def p95(values: list[float]) -> float | None:
    return round(statistics.quantiles(values, n=20)[-1], 3) if len(values) >= 2 else None


def seconds_until_offline(admin: httpx2.Client, port: str, killed_at: float) -> float | None:
    """Poll the dashboard's figures until the worker shows offline (None if not within four intervals)."""
    while time.monotonic() - killed_at < 4 * HEARTBEAT_SECONDS:
        if worker_at(admin, port)["status"] == "offline":
            return time.monotonic() - killed_at
        time.sleep(0.5)
    return None


def test_up_serves_through_nginx_and_status_shows_every_process_up(cluster: Cluster) -> None:
    workers = {"worker-smollm2-a", "worker-smollm2-b", "worker-minilm"}
    assert set(cluster.pids()) == {"nginx", "portal-1", "portal-2", "qcluster", *workers}
    client = openai.OpenAI(base_url=f"{cluster.base}/v1", api_key=cluster.api_key, timeout=120, max_retries=0)

    question: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What is the capital of France?"}
    ]
    answer = client.chat.completions.create(model=MODEL, messages=question, max_tokens=16, temperature=0)
    assert "Paris" in (answer.choices[0].message.content or "")
    streamed = client.chat.completions.create(
        model=MODEL, messages=question, max_tokens=16, temperature=0, stream=True
    )
    assert "Paris" in "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    embedding = client.embeddings.create(model="all-minilm-l6-v2", input=["hello"])
    assert len(embedding.data[0].embedding) == 384

    health = httpx2.get(f"{cluster.base}/health", timeout=10).json()
    assert health["checks"]["database"]["ok"]
    assert health["checks"]["redis"]["ok"]
    assert httpx2.get(f"{cluster.base}/static/admin/css/base.css", timeout=10).status_code == 200  # nginx's
    # The admin logs in through nginx: host and CSRF origin checks pass on a non-default port.
    with cluster.admin_client() as admin:
        assert admin.get("/admin/console/").status_code == 200

    status = run(cluster.env, "status", timeout=60)
    rows = [line.split() for line in status.stdout.splitlines()[1:]]
    assert {row[0] for row in rows} == set(cluster.pids()), status.stdout
    for row in rows:
        assert row[2] == "up", status.stdout
        assert row[0] in {"nginx", "qcluster"} or row[3] == "200", status.stdout


def kill(pid: int) -> Callable[[], None]:
    return lambda: os.kill(pid, signal.SIGKILL)


async def load_with_a_fault(
    cluster: Cluster,
    fault: Callable[[], None],
    after_kill: Callable[[float], Any] | None = None,
    requests: int = REQUESTS,
) -> tuple[list[Outcome], float, Any]:
    """The streaming load; `fault()` happens once a quarter of the requests have finished.

    Returns the outcomes, when the fault happened, and what `after_kill(killed_at)` returned
    (it runs in a thread while the load goes on).
    """
    outcomes: list[Outcome] = []
    watch: asyncio.Future[Any] | None = None
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)
    killed_at = 0.0
    limits = httpx2.Limits(max_connections=CONCURRENCY * 2)
    async with httpx2.AsyncClient(base_url=cluster.base, timeout=BOUND_SECONDS + 30, limits=limits) as client:

        async def user() -> None:
            nonlocal killed_at, watch
            while not queue.empty():
                outcome = await stream_one(client, cluster.api_key, queue.get_nowait())
                outcomes.append(outcome)
                if len(outcomes) == requests // 4 and not killed_at:
                    fault()
                    killed_at = time.monotonic()
                    if after_kill is not None:
                        watch = asyncio.ensure_future(asyncio.to_thread(after_kill, killed_at))

        await asyncio.gather(*(user() for _ in range(CONCURRENCY)))
    return outcomes, killed_at, (await watch if watch else None)


def summary(outcomes: list[Outcome], killed_at: float) -> dict[str, Any]:
    before_kill = [o for o in outcomes if o.ended <= killed_at]
    after_kill = [o for o in outcomes if o.ended > killed_at]
    failed = [o for o in outcomes if not o.ok]
    return {
        "requests": len(outcomes), "ok": len(outcomes) - len(failed), "failed": len(failed),
        "failed_started_after_kill": sum(o.started > killed_at for o in failed),
        "p95_seconds_before_kill": p95([o.ended - o.started for o in before_kill]),
        "p95_seconds_after_kill": p95([o.ended - o.started for o in after_kill]),
        "longest_seconds": round(max(o.ended - o.started for o in outcomes), 3),
        "failures": [asdict(o) for o in failed],
    }  # fmt: skip


def write_report(name: str, report: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(report, indent=2))


def assert_only_held_requests_failed(
    outcomes: list[Outcome], report: dict[str, Any], requests: int = REQUESTS
) -> None:
    assert len(outcomes) == requests
    assert report["longest_seconds"] <= BOUND_SECONDS, report
    assert report["failed_started_after_kill"] == 0, report  # new requests go to what is alive
    assert report["failed"] <= CONCURRENCY, report  # only what the dead process held


@pytest.mark.fault
def test_kill_9_of_a_worker_under_load(cluster: Cluster) -> None:
    victim_port = cluster.env["WORKER_PORTS"].split()[0]
    retried_before = retried(cluster)
    with cluster.admin_client() as admin:
        assert worker_at(admin, victim_port)["status"] == "online"
        outcomes, killed_at, offline_after = asyncio.run(
            load_with_a_fault(
                cluster,
                kill(cluster.pids()["worker-smollm2-a"]),
                lambda killed_at: seconds_until_offline(admin, victim_port, killed_at),
            )
        )
        assert killed_at, "the load ended before the kill"

        restarted = run(cluster.env, "restart", "worker-smollm2-a", timeout=60)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        deadline = time.monotonic() + 180
        while worker_at(admin, victim_port)["status"] != "online":
            assert time.monotonic() < deadline, "the restarted worker did not come online"
            time.sleep(1)
        identity = worker_at(admin, victim_port)["identity"]
    before = served_by(cluster, identity)
    headers = {"Authorization": f"Bearer {cluster.api_key}"}
    with httpx2.Client(base_url=cluster.base, timeout=60, headers=headers) as client:
        for n in range(40):  # the dispatcher spreads load: some land on the restarted worker
            question = [{"role": "user", "content": f"Hi {n}"}]
            answer = client.post(
                "/v1/chat/completions", json={"model": MODEL, "max_tokens": 2, "messages": question}
            )
            assert answer.status_code == 200, answer.text
            if served_by(cluster, identity) > before:
                break
    served_again = served_by(cluster, identity) > before

    report = summary(outcomes, killed_at)
    report["retried"] = retried(cluster) - retried_before
    report["offline_after_seconds"] = None if offline_after is None else round(offline_after, 1)
    report["served_again"] = served_again
    write_report("worker-kill", report)
    assert_only_held_requests_failed(outcomes, report)
    assert all(o.clean for o in outcomes), report  # a failure is an error event or answer, never a cut stream
    assert offline_after is not None, report
    assert offline_after <= 3 * HEARTBEAT_SECONDS + 2, report  # + the polling and the page's own time
    assert served_again, report


@pytest.mark.fault
def test_kill_9_of_a_portal_under_load(cluster: Cluster) -> None:
    retried_before = retried(cluster)
    load = load_with_a_fault(cluster, kill(cluster.pids()["portal-1"]), requests=PORTAL_KILL_REQUESTS)
    outcomes, killed_at, _ = asyncio.run(load)
    assert killed_at, "the load ended before the kill"
    restarted = run(cluster.env, "restart", "portal-1", timeout=60)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    portal = f"http://127.0.0.1:{cluster.env['PORTAL_PORTS'].split()[0]}/health"
    deadline = time.monotonic() + 60
    while not _answers(portal):
        assert time.monotonic() < deadline, "the restarted portal did not answer /health"
        time.sleep(0.5)

    report = summary(outcomes, killed_at)
    report["retried"] = retried(cluster) - retried_before
    report.update(usage_records(cluster, [o.request_id for o in outcomes if o.ok]))
    write_report("portal-kill", report)
    assert_only_held_requests_failed(outcomes, report, PORTAL_KILL_REQUESTS)
    assert all(o.request_id for o in outcomes if o.ok), report
    assert report["usage_records_lost"] == 0, report
    assert report["usage_records_duplicated"] == 0, report


@pytest.mark.fault
def test_redis_restarted_under_load(cluster: Cluster, private_redis: PrivateRedis) -> None:
    """Redis killed with -9 and started again 3 s later: the portals go on without a restart."""

    def start_again(_: float) -> None:
        time.sleep(REDIS_DOWN_SECONDS)
        private_redis.start()

    retried_before = retried(cluster)
    outcomes, killed_at, _ = asyncio.run(load_with_a_fault(cluster, private_redis.kill, start_again))
    assert killed_at, "the load ended before the kill"
    report = summary(outcomes, killed_at)
    report["retried"] = retried(cluster) - retried_before
    # Records added to the stream before the kill are in Redis's append-only file; those of the
    # requests that ended while it was down waited in their portal's memory.
    report.update(usage_records(cluster, [o.request_id for o in outcomes if o.ok]))
    write_report("redis-restart", report)
    assert report["longest_seconds"] <= BOUND_SECONDS, report
    assert all(o.clean for o in outcomes), report
    assert report["failed"] == 0, report  # limits, the queue and the usage buffer fall back without Redis
    assert report["usage_records_lost"] == 0, report
    assert report["usage_records_duplicated"] == 0, report


@pytest.mark.fault
def test_postgresql_cut_for_10_seconds_under_load(cluster: Cluster, postgres_cut: PostgresCut) -> None:
    """Every connection to PostgreSQL broken and refused for 10 s: every request served, everything back."""
    retried_before = retried(cluster)
    outcomes, cut_at, _ = asyncio.run(
        load_with_a_fault(
            cluster, lambda: postgres_cut.cut(POSTGRES_DOWN_SECONDS), requests=POSTGRES_CUT_REQUESTS
        )
    )
    assert cut_at, "the load ended before the cut"
    report = summary(outcomes, cut_at)
    report["retried"] = retried(cluster) - retried_before
    report.update(usage_records(cluster, [o.request_id for o in outcomes if o.ok]))
    with cluster.admin_client() as admin:  # the workers beat again: online, with a heartbeat after the cut
        deadline = time.monotonic() + 3 * HEARTBEAT_SECONDS + 5
        while any(w["status"] != "online" for w in fleet(admin)):
            assert time.monotonic() < deadline, fleet(admin)
            time.sleep(0.5)
    headers = {"Authorization": f"Bearer {cluster.api_key}"}
    question = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    answer = httpx2.post(f"{cluster.base}/v1/chat/completions", json=question, headers=headers, timeout=60)
    report["served_after"] = answer.status_code == 200
    write_report("postgresql-cut", report)
    assert report["longest_seconds"] <= BOUND_SECONDS, report
    assert all(o.clean for o in outcomes), report
    # Served from the portals' caches, or after waiting in the queue for workers whose heartbeats
    # expired during the cut to beat again: no 503 no_worker_available.
    assert (len(outcomes), report["ok"]) == (POSTGRES_CUT_REQUESTS, POSTGRES_CUT_REQUESTS), report
    assert report["usage_records_lost"] == 0, report  # they waited in the Redis stream
    assert report["usage_records_duplicated"] == 0, report
    assert report["served_after"], answer.text


def _answers(url: str) -> bool:
    try:
        return httpx2.get(url, timeout=2).status_code == 200
    except httpx2.HTTPError:
        return False


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_down_stops_every_process_up_started(cluster: Cluster) -> None:
    """Last: what `up` started (and the fault tests started again) is gone, its ports closed."""
    env = cluster.env
    ports = [
        int(port) for key in ("CLUSTER_PORT", "PORTAL_PORTS", "WORKER_PORTS") for port in env[key].split()
    ]
    pids = cluster.pids()
    down = run(env, "down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert [name for name, pid in pids.items() if not proc_gone(pid)] == []
    assert not any(listening(port) for port in ports)
    assert "No cluster is up." in run(env, "status", timeout=30).stdout
