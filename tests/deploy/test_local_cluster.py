"""deploy/local-cluster.sh: the production shape on loopback serves through nginx; down stops it all."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.deploy.cluster import Cluster, cluster_env, proc_gone, run, up

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_up_serves_through_nginx_and_down_stops_every_process(tmp_path: Path) -> None:
    env = cluster_env(tmp_path / "cluster", "portal_cluster_test")
    ports = [
        int(port) for key in ("CLUSTER_PORT", "PORTAL_PORTS", "WORKER_PORTS") for port in env[key].split()
    ]
    pids: dict[str, int] = {}
    try:
        cluster: Cluster = up(env)
        pids = cluster.pids()
        workers = {"worker-smollm2-a", "worker-smollm2-b", "worker-minilm"}
        assert set(pids) == {"nginx", "portal-1", "portal-2", "qcluster", *workers}
        client = openai.OpenAI(
            base_url=f"{cluster.base}/v1", api_key=cluster.api_key, timeout=120, max_retries=0
        )

        question: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": "What is the capital of France?"}
        ]
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

        health = httpx2.get(f"{cluster.base}/health", timeout=10).json()
        assert health["checks"]["database"]["ok"]
        assert health["checks"]["redis"]["ok"]
        assert (
            httpx2.get(f"{cluster.base}/static/admin/css/base.css", timeout=10).status_code == 200
        )  # nginx's
        # The admin logs in through nginx: host and CSRF origin checks pass on a non-default port.
        with cluster.admin_client() as admin:
            assert admin.get("/admin/console/").status_code == 200

        status = run(env, "status", timeout=60)
        rows = [line.split() for line in status.stdout.splitlines()[1:]]
        assert {row[0] for row in rows} == set(pids), status.stdout
        for row in rows:
            assert row[2] == "up", status.stdout
            assert row[0] in {"nginx", "qcluster"} or row[3] == "200", status.stdout
    finally:
        down = run(env, "down", timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert [name for name, pid in pids.items() if not proc_gone(pid)] == []
    assert not any(listening(port) for port in ports)
    assert "No cluster is up." in run(env, "status", timeout=30).stdout
