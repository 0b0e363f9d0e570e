"""deploy/local-cluster.sh: the production shape on loopback serves through nginx; down stops it all."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import httpx2
import openai
import psycopg
import pytest
import redis

from tests.portal_process import free_port
from tests.processes import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
SCRIPT = REPO_ROOT / "deploy" / "local-cluster.sh"
PG_URL = "postgres://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/14"


@pytest.fixture
def cluster_env(tmp_path: Path) -> dict[str, str]:
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install nginx)")
    try:
        psycopg.connect(f"{PG_URL}/postgres", connect_timeout=3).close()
        redis.Redis.from_url(REDIS_URL).ping()
    except (psycopg.Error, redis.RedisError) as exc:
        pytest.skip(f"PostgreSQL or Redis is not answering on 127.0.0.1: {exc}")
    # Only what a user's shell would have: none of the test run's Django settings.
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR", "USER"}}
    env.update(
        CLUSTER_DIR=str(tmp_path / "cluster"),
        CLUSTER_DB="portal_cluster_test",
        CLUSTER_REDIS_URL=REDIS_URL,
        CLUSTER_PORT=str(free_port()),
        PORTAL_PORTS=f"{free_port()} {free_port()}",
        WORKER_PORTS=f"{free_port()} {free_port()} {free_port()}",
        DRAIN_SECONDS="5",
    )
    return env


def run(env: dict[str, str], command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), command], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_up_serves_through_nginx_and_down_stops_every_process(cluster_env: dict[str, str]) -> None:
    base = f"http://127.0.0.1:{cluster_env['CLUSTER_PORT']}"
    keys = ("CLUSTER_PORT", "PORTAL_PORTS", "WORKER_PORTS")
    ports = [int(port) for key in keys for port in cluster_env[key].split()]
    pid_dir = Path(cluster_env["CLUSTER_DIR"]) / "pids"
    pids: dict[str, int] = {}
    try:
        up = run(cluster_env, "up", timeout=480)
        assert up.returncode == 0, up.stdout + up.stderr
        pids = {path.stem: int(path.read_text()) for path in pid_dir.glob("*.pid")}
        workers = {"worker-smollm2-a", "worker-smollm2-b", "worker-minilm"}
        assert set(pids) == {"nginx", "portal-1", "portal-2", "qcluster", *workers}
        key = re.search(r"API key\s+(sk-\S+)", up.stdout)
        assert key, up.stdout
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key.group(1), timeout=120, max_retries=0)

        question = [{"role": "user", "content": "What is the capital of France?"}]
        answer = client.chat.completions.create(
            model="smollm2-135m-instruct", messages=question, max_tokens=16, temperature=0
        )
        assert "Paris" in (answer.choices[0].message.content or "")
        streamed = client.chat.completions.create(
            model="smollm2-135m-instruct", messages=question, max_tokens=16, temperature=0, stream=True
        )
        assert "Paris" in "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        embedding = client.embeddings.create(model="all-minilm-l6-v2", input=["hello"])
        assert len(embedding.data[0].embedding) == 384

        health = httpx2.get(f"{base}/health", timeout=10).json()
        assert health["checks"]["database"]["ok"]
        assert health["checks"]["redis"]["ok"]
        assert httpx2.get(f"{base}/static/admin/css/base.css", timeout=10).status_code == 200  # nginx's
        # The admin logs in through nginx: host and CSRF origin checks pass on a non-default port.
        admin = re.search(r"Admin user \(shown once\): (\S+) / (\S+)", up.stdout)
        assert admin, up.stdout
        with httpx2.Client(base_url=base, timeout=10) as browser:
            browser.get("/admin/login/")
            login = browser.post(
                "/admin/login/?next=/admin/",
                data={"username": admin.group(1), "password": admin.group(2), "next": "/admin/",
                      "csrfmiddlewaretoken": browser.cookies["csrftoken"]},
                headers={"Origin": base, "Referer": f"{base}/admin/login/"},
            )  # fmt: skip
            assert login.status_code == 302, login.text[:500]
            assert browser.get("/admin/console/").status_code == 200

        status = run(cluster_env, "status", timeout=60)
        rows = [line.split() for line in status.stdout.splitlines()[1:]]
        assert {row[0] for row in rows} == set(pids), status.stdout
        for row in rows:
            assert row[2] == "up", status.stdout
            assert row[0] in {"nginx", "qcluster"} or row[3] == "200", status.stdout
    finally:
        down = run(cluster_env, "down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    for name, pid in pids.items():
        status_file = Path(f"/proc/{pid}/status")
        assert not status_file.exists() or "State:\tZ" in status_file.read_text(), name  # gone, or a zombie
    assert not any(listening(port) for port in ports)
    assert "No cluster is up." in run(cluster_env, "status", timeout=30).stdout
