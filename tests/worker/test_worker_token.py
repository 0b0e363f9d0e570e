"""WORKER_TOKEN on a real `runworker` process: required off loopback, checked on every route but /health."""

from __future__ import annotations

import httpx2
import pytest
from django.core.management.base import CommandError

from inference.management.commands.runworker import check_exposure
from tests.processes import run_command, start_worker, subprocess_env

CANNED = ("--model-path", "canned", "--backend", "canned", "--no-register")


def test_a_non_loopback_bind_without_a_token_refuses_to_start_with_one_line() -> None:
    result = run_command("runworker", *CANNED, "--host", "0.0.0.0", env=subprocess_env({"WORKER_TOKEN": ""}))
    assert result.returncode != 0
    assert "WORKER READY" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "WORKER_TOKEN" in lines[0]
    assert "0.0.0.0" in lines[0]


@pytest.mark.parametrize(("host", "token"), [("127.0.0.1", None), ("::1", None), ("0.0.0.0", "t")])
def test_loopback_or_a_token_may_serve(host: str, token: str | None) -> None:
    check_exposure(host, token)


@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "10.0.0.5", "worker.example"])
def test_any_other_bind_needs_a_token(host: str) -> None:
    with pytest.raises(CommandError, match="WORKER_TOKEN"):
        check_exposure(host, None)


@pytest.mark.processes
def test_a_worker_started_with_the_token_from_the_environment_requires_it() -> None:
    env = subprocess_env({"WORKER_TOKEN": "env-s3cret"})
    with start_worker(*CANNED, env=env) as worker, httpx2.Client(timeout=30) as client:
        body = {"model": "canned", "prompt": "hi", "max_tokens": 2}
        assert client.get(f"{worker.address}/health").status_code == 200
        refused = client.post(f"{worker.address}/v1/completions", json=body)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_worker_token"
        wrong = {"Authorization": "Bearer env-s3creT"}
        assert client.get(f"{worker.address}/status", headers=wrong).status_code == 401
        good = {"Authorization": "Bearer env-s3cret"}
        assert client.post(f"{worker.address}/v1/completions", json=body, headers=good).status_code == 200


@pytest.mark.processes
def test_the_worker_token_option_overrides_the_environment() -> None:
    env = subprocess_env({"WORKER_TOKEN": "env-s3cret"})
    with start_worker(*CANNED, "--worker-token", "cli-s3cret", env=env) as worker:
        status = f"{worker.address}/status"
        assert httpx2.get(status, headers={"Authorization": "Bearer env-s3cret"}).status_code == 401
        assert httpx2.get(status, headers={"Authorization": "Bearer cli-s3cret"}).status_code == 200
