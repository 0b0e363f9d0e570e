"""An elastic fleet under a step load: autoscaling against one fixed replica, evictions, a cold start.

    python benchmarks/autoscale.py [--slots 2] [--tokens 20] [--token-delay 0.05] [--plateau 40]
                                   [--cooldown 15] [--max-replicas 10] [--scale-up-after 2]
                                   [--png var/autoscale.png] [--skip-smol]

In one run: a scratch SQLite database, a daphne portal, `manage.py runagent`
and the canned workers it starts (each token takes --token-delay, so one
request takes tokens x delay seconds and a replica serves `slots` at once,
`--max-queue 0`). The load steps from idle to 4x one replica's capacity for
--plateau seconds and back to idle, twice: against an autoscaled deployment
(min 1, max --max-replicas) and against a fixed single replica. Printed per
mode: requests served and refused; the queue wait (time to first token)
p50/p95 of the requests sent once scaled, that is from when the ready
replicas first reached the count the scheduler asked for to the end of the
load (the fixed run over the same span); the replicas over time (a table,
and a PNG drawn with matplotlib when it is installed); and how long after
the last request was sent the replicas were back at min.
Then three models whose replicas fit two at a time on the node, requests
alternating between them (served, evictions); and the cold start of SmolLM2
(llama.cpp) from zero replicas to its first answer.
Targets: 0 refused with autoscaling; p95 once scaled <= 2x a replica's
service time; back to min within cooldown + 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.gateway_overhead import environment, manage  # noqa: E402
from tests.portal_process import PortalProcess, free_port  # noqa: E402


class Fleet:
    """The scratch database read directly: ready replicas and events, without Django in this process."""

    def __init__(self, path: str) -> None:
        self.path = path

    def query(self, sql: str, *args: object) -> list[tuple]:
        with contextlib.closing(sqlite3.connect(self.path, timeout=10)) as db:
            return db.execute(sql, args).fetchall()

    def ready(self, name: str) -> int:
        sql = (
            "SELECT count(*) FROM fleet_instance i JOIN fleet_deployment d ON i.deployment_id = d.id "
            "WHERE d.name = ? AND i.wanted AND i.state = 'ready'"
        )
        return int(self.query(sql, name)[0][0])

    def instances(self, name: str) -> int:
        sql = (
            "SELECT count(*) FROM fleet_instance i JOIN fleet_deployment d ON i.deployment_id = d.id "
            "WHERE d.name = ?"
        )
        return int(self.query(sql, name)[0][0])

    def asked(self, name: str) -> int:
        rows = self.query("SELECT replicas FROM fleet_deployment WHERE name = ?", name)
        return int(rows[0][0]) if rows else 0

    def evictions(self) -> int:
        return int(
            self.query(
                "SELECT count(*) FROM fleet_deploymentevent WHERE action = 'evicted' AND replicas_after = 0"
            )[0][0]
        )

    def node_memory(self) -> int:
        return int(self.query("SELECT memory_bytes FROM fleet_node")[0][0])


async def one(
    client: httpx2.AsyncClient, url: str, body: dict, headers: dict
) -> tuple[float, int, float | None]:
    sent = time.monotonic()
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                return sent, response.status_code, None
            first = None
            async for line in response.aiter_lines():
                if first is None and '"content"' in line:
                    first = time.monotonic() - sent
            return sent, 200, first
    except httpx2.HTTPError:
        return sent, 0, None


async def step_load(
    url: str, body: dict, headers: dict, rate: float, plateau: float
) -> tuple[list[tuple[float, int, float | None]], float]:
    """Open-loop arrivals at `rate` a second for `plateau` seconds; every answer, and when the last went."""
    limits = httpx2.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx2.AsyncClient(timeout=180, limits=limits) as client:
        tasks = []
        start = time.monotonic()
        sent = 0
        while time.monotonic() - start < plateau:
            due = int((time.monotonic() - start) * rate) + 1
            while sent < due:
                tasks.append(asyncio.create_task(one(client, url, body, headers)))
                sent += 1
            await asyncio.sleep(0.02)
        arrivals_end = time.monotonic()
        return list(await asyncio.gather(*tasks)), arrivals_end


Sample = tuple[float, int, int, int]  # seconds, ready replicas, replicas asked for, instances (any state)


def sample(fleet: Fleet, name: str, series: list[Sample], origin: float, stop: threading.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(sqlite3.Error):
            series.append(
                (time.monotonic() - origin, fleet.ready(name), fleet.asked(name), fleet.instances(name))
            )
        stop.wait(1.0)


def scaled_at(series: list[Sample], load_start: float) -> float | None:
    """When, after the load began, the ready replicas first reached the count asked for, above one."""
    return next((t for t, ready, asked, _ in series if t > load_start and asked > 1 and ready >= asked), None)


def back_at(series: list[Sample], after: float) -> float | None:
    """When, after `after`, one replica was asked for, ready, and the only instance left."""
    return next((t for t, ready, asked, n in series if t >= after and asked == ready == n == 1), None)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def run_mode(
    label: str, name: str, portal: PortalProcess, fleet: Fleet, secret: str, args: argparse.Namespace
) -> dict:
    service = args.tokens * args.token_delay
    rate = 4 * args.slots / service
    body = {"model": name, "messages": [{"role": "user", "content": "go"}], "max_tokens": args.tokens,
            "ignore_eos": True, "stream": True}  # fmt: skip
    series: list[Sample] = []
    stop = threading.Event()
    origin = time.monotonic()
    sampler = threading.Thread(target=sample, args=(fleet, name, series, origin, stop), daemon=True)
    sampler.start()
    time.sleep(5)  # idle
    load_start = time.monotonic() - origin
    url, headers = f"{portal.url}/v1/chat/completions", {"Authorization": f"Bearer {secret}"}
    answers, arrivals_end = asyncio.run(step_load(url, body, headers, rate, args.plateau))
    load_end, answered = arrivals_end - origin, time.monotonic() - origin
    deadline = time.monotonic() + args.cooldown + 90
    while time.monotonic() < deadline and back_at(series, load_end) is None:
        time.sleep(1)
    time.sleep(3)
    stop.set()
    sampler.join()
    back = back_at(series, load_end)
    return {
        "label": label, "answers": answers, "origin": origin, "series": series,
        "load": (load_start, load_end),
        "answered": answered - load_end, "back": None if back is None else back - load_end,
        "scaled": scaled_at(series, load_start), "rate": rate, "service": service,
    }  # fmt: skip


def waits(result: dict, since: float) -> dict:
    """Served and refused; the queue wait (time to first token) of requests sent from `since` on."""
    answers, origin = result["answers"], result["origin"]
    window = [w for sent, code, w in answers if code == 200 and w is not None and sent - origin >= since]
    return {
        "served": sum(c == 200 for _, c, _ in answers), "refused": sum(c != 200 for _, c, _ in answers),
        "p50": percentile(window, 0.5), "p95": percentile(window, 0.95), "count": len(window),
    }  # fmt: skip


def draw(results: list[dict], png: Path) -> str:
    """Ready replicas over time, both modes, the load shaded; where the PNG went, or why it was not drawn."""
    try:
        import matplotlib
    except ImportError:
        return "not drawn: matplotlib is missing (pip install -e .[bench])"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for result in results:
        xs, ys = [s[0] for s in result["series"]], [s[1] for s in result["series"]]
        ax.step(xs, ys, where="post", label=f"{result['label']} (ready replicas)")
    start, end = results[0]["load"]
    ax.axvspan(start, end, alpha=0.15, label=f"load: {results[0]['rate']:g} req/s (4x one replica)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("ready replicas")
    ax.legend(loc="upper right")
    ax.set_title("Autoscaling under a step load (canned workers)")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100, bbox_inches="tight")
    return str(png)


def timed_chat(portal: PortalProcess, secret: str, model: str) -> tuple[int, float]:
    started = time.monotonic()
    response = httpx2.post(f"{portal.url}/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                           json={"model": model, "messages": [{"role": "user", "content": "Hi"}],
                                 "max_tokens": 8},
                           timeout=300)  # fmt: skip
    return response.status_code, time.monotonic() - started


def wait(predicate: object, timeout: float) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--token-delay", type=float, default=0.05)
    parser.add_argument("--plateau", type=float, default=40.0)
    parser.add_argument("--cooldown", type=int, default=15)
    parser.add_argument(
        "--max-replicas",
        type=int,
        default=10,
        help="2.5x the load: room to drain the backlog of the scale-up.",
    )
    parser.add_argument(
        "--scale-up-after",
        type=int,
        default=2,
        help="A step load: react within seconds (HPA's default: 0).",
    )
    parser.add_argument("--png", type=Path, default=REPO / "var" / "autoscale.png")
    parser.add_argument("--skip-smol", action="store_true", help="Leave out SmolLM2's cold start.")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="autoscale-")
    env = environment(tmp) | {
        "WORKER_CACHE_SECONDS": "0.2",
        "HEARTBEAT_INTERVAL": "1",
        "LOG_DIR": f"{tmp}/log",
        "QUEUE_MAX_PER_CALLER": "100000",  # one key stands for many clients: no cap on its waiting requests
    }
    manage(env, "migrate", "--noinput")
    secret = manage(env, "createapikey", "--name", "bench", "--rpm", "1000000", "--tpm", "1000000000")
    fleet = Fleet(f"{tmp}/bench.sqlite3")
    portal = PortalProcess(free_port(), env)
    portal.wait_ready(60)
    log = open(f"{tmp}/agent.log", "w")  # noqa: SIM115
    command = [sys.executable, "manage.py", "runagent", "--name", "bench", "--interval", "0.5"]
    agent = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait(lambda: fleet.query("SELECT count(*) FROM fleet_node")[0][0] == 1, 60)
        common = ["--model-path", "canned", "--backend", "canned", "--max-concurrency", str(args.slots),
                  "--extra-args", f"--canned-token-delay {args.token_delay} --max-queue 0"]  # fmt: skip
        scaling = ["--min-replicas", "1", "--max-replicas", str(args.max_replicas),
                   "--scale-up-after", str(args.scale_up_after),
                   "--cooldown", str(args.cooldown), "--target-queue-wait", "0.5"]  # fmt: skip
        results = []
        for label, name, extra in (
            (f"autoscaled 1-{args.max_replicas}", "auto", scaling),
            ("fixed 1", "fixed", ["--replicas", "1"]),
        ):
            manage(env, "deploy", "create", name, *common, *extra)
            assert wait(lambda name=name: fleet.ready(name) == 1, 120), Path(f"{tmp}/agent.log").read_text()[
                -3000:
            ]
            results.append(run_mode(label, name, portal, fleet, secret, args))
            manage(env, "deploy", "stop", name)
        report(results, args)
        print(f"PNG: {draw(results, args.png)}")
        evict(env, fleet, portal, secret)
        if not args.skip_smol:
            smol(env, fleet, portal, secret)
    finally:
        agent.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.wait(60)
        portal.stop()


def report(results: list[dict], args: argparse.Namespace) -> None:
    auto, fixed = results
    start, end = auto["load"]
    print(
        f"one replica: {args.slots} slots x {auto['service']:g} s a request; "
        f"load {auto['rate']:g} req/s (4x one replica) "
        f"for {args.plateau:g} s; cooldown {args.cooldown} s"
    )
    scaled = auto["scaled"]
    if scaled is None:
        print("once scaled: never (the ready replicas never reached the count asked for)")
        since = end
    else:
        asked = next(a for t, _, a, _ in auto["series"] if t >= scaled)
        print(
            f"once scaled: requests sent from {scaled - start:.0f} s into the load (when the ready replicas "
            f"first reached the {asked} asked for) to its end at {end - start:.0f} s; "
            "the fixed run over the same span"
        )
        since = scaled - start
    print(f"{'mode':16} {'served':>7} {'refused':>8} {'wait p50':>9} {'wait p95':>9} {'back to min':>12}")
    for r in results:
        w = waits(r, r["load"][0] + since)
        back = "-" if r is fixed or r["back"] is None else f"{r['back']:.0f} s"
        figures = f"{w['served']:>7} {w['refused']:>8} {w['p50']:>8.2f}s {w['p95']:>8.2f}s"
        print(f"{r['label']:16} {figures} {back:>12}")
    target = args.cooldown + 30
    print(
        f"back to min: counted from the last request sent (its answer came {auto['answered']:.1f} s later) "
        f"(target: {target} s = cooldown + 30 s; p95 target: {2 * auto['service']:g} s = 2x a request)"
    )
    print("replicas over time (s from the load's start: autoscaled ready/asked | fixed ready):")
    rows = {int(t - start): (ready, asked) for t, ready, asked, _ in auto["series"]}
    fixed_rows = {int(t - fixed["load"][0]): ready for t, ready, _, _ in fixed["series"]}
    for second in range(-5, max(rows, default=0) + 1, 5):
        ready, asked = rows.get(second, ("-", "-"))
        print(f"  {second:4d} s: {ready}/{asked} | {fixed_rows.get(second, '-')}")


def evict(env: dict[str, str], fleet: Fleet, portal: PortalProcess, secret: str) -> None:
    share = int(fleet.node_memory() * 0.42)  # two fit in the 90% a node lends
    for name in ("m1", "m2", "m3"):
        manage(env, "deploy", "create", name, "--model-path", "canned", "--backend", "canned",
               "--min-replicas", "0",
               "--max-replicas", "1", "--memory", str(share))  # fmt: skip
    wait(lambda: sum(fleet.ready(n) for n in ("m1", "m2", "m3")) == 2, 120)
    answers = [timed_chat(portal, secret, name) for name in ("m1", "m2", "m3") * 3]
    served = sum(code == 200 for code, _ in answers)
    slowest = max(seconds for _, seconds in answers)
    print(
        f"three models, two fit: {served}/{len(answers)} served, {fleet.evictions()} evictions, "
        f"slowest {slowest:.1f} s"
    )
    for name in ("m1", "m2", "m3"):
        manage(env, "deploy", "stop", name)


def smol(env: dict[str, str], fleet: Fleet, portal: PortalProcess, secret: str) -> None:
    manage(env, "deploy", "create", "smol", "--model-path", "smollm2-135m-instruct", "--backend", "llamacpp",
           "--min-replicas", "0", "--max-replicas", "1", "--idle-seconds", "5")  # fmt: skip
    wait(lambda: fleet.ready("smol") == 1, 300)
    timed_chat(portal, secret, "smol")
    wait(lambda: fleet.instances("smol") == 0, 120)  # idle: scaled to zero
    code, seconds = timed_chat(portal, secret, "smol")
    print(f"SmolLM2 (llama.cpp) cold start, from zero replicas to its answer: {seconds:.1f} s (HTTP {code})")


if __name__ == "__main__":
    main()
