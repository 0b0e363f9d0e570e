"""Run deploy/local-cluster.sh from tests: its environment, its commands and what `up` printed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import psycopg
import pytest
import redis

from tests.portal_process import free_port
from tests.processes import REPO_ROOT, TEST_REDIS_URL

SCRIPT = REPO_ROOT / "deploy" / "local-cluster.sh"
PG_URL = "postgres://postgres@127.0.0.1:5432"
REDIS_URL = TEST_REDIS_URL


def cluster_env(directory: Path, database: str) -> dict[str, str]:
    """The environment of a user's shell (none of the test run's settings) plus the cluster's ports.

    The run's model cache goes with it (a user may name one too): the cluster's workers find the
    packaged models converted once per run instead of converting them again.
    """
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install nginx)")
    try:
        psycopg.connect(f"{PG_URL}/postgres", connect_timeout=3).close()
        redis.Redis.from_url(REDIS_URL).ping()
    except (psycopg.Error, redis.RedisError) as exc:
        pytest.skip(f"PostgreSQL or Redis is not answering on 127.0.0.1: {exc}")
    shell = {"PATH", "HOME", "LANG", "TMPDIR", "USER", "MODEL_CACHE_DIR"}
    env = {k: v for k, v in os.environ.items() if k in shell}
    env.update(
        CLUSTER_DIR=str(directory),
        CLUSTER_DB=database,
        CLUSTER_REDIS_URL=REDIS_URL,
        CLUSTER_PORT=str(free_port()),
        PORTAL_PORTS=f"{free_port()} {free_port()}",
        WORKER_PORTS=f"{free_port()} {free_port()} {free_port()}",
        DRAIN_SECONDS="5",
    )
    return env


def run(env: dict[str, str], *command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *command], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


@dataclass
class Cluster:
    """A cluster that `up` started: its base URL (nginx), API key, admin login, settings and pids."""

    env: dict[str, str]
    output: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.env['CLUSTER_PORT']}"

    @property
    def api_key(self) -> str:
        return self._printed(r"API key\s+(sk-\S+)")[0]

    @property
    def admin(self) -> tuple[str, str]:
        user, password = self._printed(r"Admin user \(shown once\): (\S+) / (\S+)")
        return user, password

    @property
    def settings(self) -> dict[str, str]:
        lines = (Path(self.env["CLUSTER_DIR"]) / "cluster.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def pids(self) -> dict[str, int]:
        return {
            path.stem: int(path.read_text())
            for path in (Path(self.env["CLUSTER_DIR"]) / "pids").glob("*.pid")
        }

    @contextmanager
    def admin_client(self) -> Iterator[httpx2.Client]:
        """An httpx client logged in to the admin through nginx."""
        with httpx2.Client(base_url=self.base, timeout=10) as client:
            client.get("/admin/login/")
            user, password = self.admin
            login = client.post(
                "/admin/login/?next=/admin/",
                data={"username": user, "password": password, "next": "/admin/",
                      "csrfmiddlewaretoken": client.cookies["csrftoken"]},
                headers={"Origin": self.base, "Referer": f"{self.base}/admin/login/"},
            )  # fmt: skip
            assert login.status_code == 302, login.text[:500]
            yield client

    def _printed(self, pattern: str) -> tuple[str, ...]:
        found = re.search(pattern, self.output)
        assert found, self.output
        return found.groups()


def up(env: dict[str, str]) -> Cluster:
    started = run(env, "up", timeout=480)
    assert started.returncode == 0, started.stdout + started.stderr
    return Cluster(env=env, output=started.stdout)


def proc_gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts as gone)."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" in status.read_text()
    except FileNotFoundError:
        return True
