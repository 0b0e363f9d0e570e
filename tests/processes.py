"""Start real worker processes from tests: `start_worker(...)` and `subprocess_env()`.

A child process must see the rows the test writes and the test must see the
child's: `subprocess_env()` points it at the test database (use
`@pytest.mark.django_db(transaction=True)` so rows are committed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from django.db import connection

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_PREFIX = "WORKER READY "


# The Redis database tests may empty; another number keeps a second test run (a developer's,
# beside a verification run) out of this one's way. Each pytest-xdist worker (gw0, gw1, ...) takes
# the next lower number, so parallel workers never empty each other's.
_XDIST_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_REDIS_BASE, _, _REDIS_DB = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15").rpartition("/")
TEST_REDIS_URL = f"{_REDIS_BASE}/{int(_REDIS_DB) - _XDIST_INDEX}"


def database_url() -> str:
    """The URL of the database this test process uses now (the test database once created)."""
    config = connection.settings_dict
    if config["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{config['NAME']}"
    user = quote(config.get("USER") or "", safe="")
    password = quote(config.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = config.get("HOST") or "127.0.0.1"
    port = f":{config['PORT']}" if config.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{config['NAME']}"


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that shares this test's database and settings."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=database_url(),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


class WorkerProcess:
    """A `manage.py runworker` child; `.address` is set once it printed its READY line."""

    def __init__(self, args: list[str], env: dict[str, str] | None) -> None:
        self.args = args
        self.address = ""
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "runworker", *args],
            cwd=REPO_ROOT,
            env=env if env is not None else subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # A reader thread: the pipe must keep draining or a chatty child blocks.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith(READY_PREFIX) and not self.address:
                self.address = line[len(READY_PREFIX) :].strip()
                self._ready.set()
        self._ready.set()  # the child exited: wake the waiter

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float) -> None:
        if not self._ready.wait(timeout) or not self.address:
            self.kill()
            raise RuntimeError(f"runworker {' '.join(self.args)} did not become ready:\n{self.output}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig`, wait for the exit and return its code; kill if it takes longer than `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(timeout=5)
        return self.proc.returncode

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the child to exit on its own; return its exit code."""
        self.proc.wait(timeout)
        self._reader.join(timeout=5)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()


def start_worker(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> WorkerProcess:
    """Start `manage.py runworker *args` and wait for `WORKER READY`; raise with its output if it fails."""
    worker = WorkerProcess(list(args), env)
    worker.wait_ready(timeout)
    return worker


def all_ready(*workers: WorkerProcess, timeout: float = 120) -> tuple[WorkerProcess, ...]:
    """Wait until each of `workers` is ready: started together, their loads overlap.

    If one fails, all are stopped and the failure is raised.
    """
    try:
        for worker in workers:
            worker.wait_ready(timeout)
    except BaseException:
        for worker in workers:
            worker.kill()
        raise
    return workers


def run_command(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    """Run `manage.py *args` to completion (for commands that should exit, e.g. a failing start)."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO_ROOT,
        env=env if env is not None else subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.1) -> bool:
    """Poll `predicate()` until it is truthy or `timeout` passes; return its last truthiness."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
