"""Start a real portal (daphne) from tests: `start_portal(...)`.

The portal shares the test database with the test and the workers through
`subprocess_env()`; use `@pytest.mark.django_db(transaction=True)`.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from types import TracebackType

import httpx2

from tests.processes import REPO_ROOT, subprocess_env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PortalProcess:
    """A `daphne portal.asgi:application` child on a loopback port; `.url` is its base URL."""

    def __init__(self, port: int, env: dict[str, str]) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        # A file, not a pipe: nobody drains a pipe while tests run, and a full pipe blocks the portal.
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            "w+", prefix="portal-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "portal.asgi:application"],
            cwd=REPO_ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float) -> None:
        """Poll until the portal answers HTTP (any status); raise with its stderr if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the portal exited with {self.proc.returncode}:\n{self.output()}")
            try:
                httpx2.get(f"{self.url}/v1/models", timeout=1.0)
                return
            except httpx2.HTTPError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"the portal did not answer within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        """The portal's log so far (its last 20,000 characters), for failure messages."""
        with open(self.log.name) as log:
            return log.read()[-20000:]

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> PortalProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_portal(
    *, env: dict[str, str] | None = None, extra_env: dict[str, str] | None = None, timeout: float = 60
) -> PortalProcess:
    """Start a portal on a free loopback port sharing the test database; wait until it answers.

    `extra_env` adds settings (e.g. {"WORKER_CACHE_SECONDS": "0.2"}) to `subprocess_env()`.
    """
    portal = PortalProcess(free_port(), env if env is not None else subprocess_env(extra_env))
    portal.wait_ready(timeout)
    return portal


def two_portals(
    *, env: dict[str, str] | None = None, extra_env: dict[str, str] | None = None
) -> Iterator[tuple[PortalProcess, PortalProcess]]:
    """Start two portals sharing the test database (and `env`), yield both, stop both."""
    first = start_portal(env=env, extra_env=extra_env)
    try:
        second = start_portal(env=env, extra_env=extra_env)
    except BaseException:
        first.stop()
        raise
    with first, second:
        yield first, second
