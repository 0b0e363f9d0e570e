"""`manage.py runworker` as a real process on loopback (canned engine): lifecycle in the registry.

The registry tests start a worker each (its row is what they check); the
stream tests share one unregistered worker, idle again after each test.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import threading
import time
from collections.abc import Iterator

import httpx2
import pytest
from django.core.management import get_commands, load_command_class

from registry.models import ModelTask, ServedModel, Worker, WorkerStatus
from registry.services.workers import expire_stale_workers
from tests.processes import WorkerProcess, run_command, start_worker, wait_for

pytestmark = pytest.mark.processes
CANNED = ("--model-path", "canned", "--backend", "canned")


def completion(address: str, **body: object) -> httpx2.Response:
    payload = {"model": "canned", "prompt": "hi", "max_tokens": 4, **body}
    return httpx2.post(f"{address}/v1/completions", json=payload, timeout=30)


def status(address: str) -> dict:
    return httpx2.get(f"{address}/status", timeout=5).json()


def test_our_runworker_overrides_channels() -> None:
    assert get_commands()["runworker"] == "inference"
    command = load_command_class("inference", "runworker")
    assert "--model-path" in command.create_parser("manage.py", "runworker").format_help()
    result = run_command("runworker", "--help")
    assert "--model-path" in result.stdout
    assert "--worker-address" in result.stdout


def test_wrong_worker_address_exits_non_zero_with_one_line_error() -> None:
    result = run_command("runworker", *CANNED, "--no-register", "--worker-address", "http://127.0.0.1:9")
    assert result.returncode != 0
    assert "WORKER READY" not in result.stdout
    message = [line for line in result.stderr.splitlines() if "worker address" in line]
    assert len(message) == 1, result.stderr
    assert "http://127.0.0.1:9" in message[0]
    assert "--worker-address" in message[0]


def test_a_global_seed_is_refused_by_an_engine_that_seeds_each_request() -> None:
    result = run_command("runworker", *CANNED, "--no-register", "--seed", "3")
    assert result.returncode != 0
    assert "--seed is used by the vLLM engine only, not by canned" in result.stderr


def test_a_prefill_role_is_refused_by_an_engine_that_cannot_hand_off() -> None:
    result = run_command("runworker", *CANNED, "--no-register", "--role", "prefill")
    assert result.returncode != 0
    assert "--role prefill: the canned engine does not split prefill from decode." in result.stderr


def test_the_vllm_backend_without_vllm_fails_at_start_in_one_line() -> None:
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    result = run_command(
        "runworker", "--model-path", "smollm2-135m-instruct", "--backend", "vllm", "--no-register"
    )
    assert result.returncode != 0
    assert (
        result.stderr.strip().splitlines()[-1]
        == "CommandError: The vllm backend needs vLLM: pip install '.[vllm]'"
    )


@pytest.mark.django_db(transaction=True)
def test_registration_row_has_the_workers_fields() -> None:
    with start_worker(
        *CANNED,
        "--model-names",
        "canned,canned-b",
        "--worker-id",
        "reg-1",
        "--max-concurrency",
        "3",
        "--max-queue",
        "7",
        "--heartbeat-interval",
        "0.5",
    ) as worker:
        row = Worker.objects.get(identity="reg-1")
        assert row.status == WorkerStatus.ONLINE
        assert row.effective_status == WorkerStatus.ONLINE
        assert row.address == worker.address
        assert row.pid == worker.proc.pid
        assert (row.backend, row.device, row.model_path) == ("canned", "cpu", "canned")
        assert (row.max_concurrency, row.max_queue, row.heartbeat_interval) == (3, 7, 0.5)
        assert sorted(row.served_models.values_list("name", flat=True)) == ["canned", "canned-b"]
        assert ServedModel.objects.get(name="canned-b").task == ModelTask.GENERATE
        assert Worker.objects.online().filter(served_models__name="canned").exists()


@pytest.mark.django_db(transaction=True)
def test_heartbeat_reports_in_flight_and_speed() -> None:
    with start_worker(
        *CANNED, "--worker-id", "hb-1", "--heartbeat-interval", "0.3", "--canned-token-delay", "0.02"
    ) as worker:
        first_beat = Worker.objects.get(identity="hb-1").last_heartbeat
        request = threading.Thread(target=completion, args=(worker.address,), kwargs={"max_tokens": 100})
        request.start()
        assert wait_for(lambda: Worker.objects.get(identity="hb-1").in_flight == 1, timeout=5)
        request.join()
        row = Worker.objects.get(identity="hb-1")
        assert row.tokens_per_second > 0
        assert row.last_heartbeat is not None
        assert first_beat is not None
        assert row.last_heartbeat > first_beat
        assert wait_for(lambda: Worker.objects.get(identity="hb-1").in_flight == 0, timeout=5)


@pytest.mark.django_db(transaction=True)
def test_sigterm_drains_in_flight_request_then_goes_offline_and_exits_zero() -> None:
    worker = start_worker(*CANNED, "--worker-id", "drain-1", "--canned-token-delay", "0.05")
    with worker, httpx2.Client(timeout=30) as client:
        body = {"model": "canned", "prompt": "hi", "max_tokens": 30, "stream": True}
        with client.stream("POST", f"{worker.address}/v1/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            worker.proc.send_signal(signal.SIGTERM)
            assert wait_for(lambda: Worker.objects.get(identity="drain-1").status == WorkerStatus.DRAINING, 5)
            assert client.get(f"{worker.address}/health").status_code == 503
            refused = client.post(f"{worker.address}/v1/completions", json={"model": "canned", "prompt": "x"})
            assert refused.status_code == 503
            payloads = [line[6:] for line in lines if line.startswith("data: ")]
        assert payloads[-1] == "[DONE]"
        assert json.loads(payloads[-2])["choices"][0]["finish_reason"] == "length"
        assert worker.wait(timeout=20) == 0, worker.output
    assert Worker.objects.get(identity="drain-1").status == WorkerStatus.OFFLINE, worker.output


@pytest.mark.django_db(transaction=True)
def test_killed_worker_expires_and_restart_reuses_its_row() -> None:
    args = (*CANNED, "--worker-id", "kill-1", "--heartbeat-interval", "0.3")
    with start_worker(*args) as worker:
        row_id = Worker.objects.get(identity="kill-1").pk
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)
    assert wait_for(lambda: not Worker.objects.online().filter(identity="kill-1").exists(), timeout=5)
    assert Worker.objects.get(identity="kill-1").status == WorkerStatus.ONLINE  # stored, not yet swept
    assert expire_stale_workers() == 1
    assert Worker.objects.get(identity="kill-1").status == WorkerStatus.OFFLINE
    with start_worker(*args):
        row = Worker.objects.get(identity="kill-1")
        assert row.pk == row_id
        assert row.effective_status == WorkerStatus.ONLINE


@pytest.mark.django_db(transaction=True)
def test_sweep_workers_command_marks_expired_rows_offline() -> None:
    with start_worker(*CANNED, "--worker-id", "sweep-1", "--heartbeat-interval", "0.2") as worker:
        worker.stop(signal.SIGKILL)
    time.sleep(0.7)
    result = run_command("sweep_workers")
    assert result.returncode == 0, result.stderr
    assert "1 stale worker(s)" in result.stdout
    assert Worker.objects.get(identity="sweep-1").status == WorkerStatus.OFFLINE


@pytest.fixture(scope="module")
def streaming_worker() -> Iterator[WorkerProcess]:
    with start_worker(*CANNED, "--no-register", "--canned-token-delay", "0.02") as worker:
        yield worker


@pytest.fixture
def worker(streaming_worker: WorkerProcess) -> WorkerProcess:
    """The module's stream worker, running and with nothing in flight."""
    assert streaming_worker.proc.poll() is None, streaming_worker.output
    assert wait_for(lambda: status(streaming_worker.address)["in_flight"] == 0, timeout=5)
    return streaming_worker


def test_client_disconnect_aborts_the_generation(worker: WorkerProcess) -> None:
    body = {"model": "canned", "prompt": "hi", "max_tokens": 2000, "stream": True}
    with httpx2.Client(timeout=30) as client:
        with client.stream("POST", f"{worker.address}/v1/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: a dropped iterator closes the stream
            assert next(lines).startswith("data: ")
            assert status(worker.address)["in_flight"] == 1
        # Leaving the block closed the connection mid-stream; 2000 tokens would take 40 s.
        assert wait_for(lambda: status(worker.address)["in_flight"] == 0, timeout=3)
        with pytest.raises(httpx2.ReadTimeout):
            client.post(f"{worker.address}/v1/completions", json={**body, "stream": False}, timeout=0.5)
        assert wait_for(lambda: status(worker.address)["in_flight"] == 0, timeout=3)


def test_abort_endpoint_ends_a_stream_with_finish_reason_abort(worker: WorkerProcess) -> None:
    body = {"model": "canned", "prompt": "hi", "max_tokens": 2000, "stream": True}
    headers = {"X-Request-Id": "abort-me"}
    with (
        httpx2.Client(timeout=30) as client,
        client.stream("POST", f"{worker.address}/v1/completions", json=body, headers=headers) as response,
    ):
        lines = response.iter_lines()
        next(lines)
        assert client.post(f"{worker.address}/abort/abort-me").json()["aborted"] is True
        payloads = [line[6:] for line in lines if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    assert json.loads(payloads[-2])["choices"][0]["finish_reason"] == "abort"
    assert status(worker.address)["in_flight"] == 0


def test_abort_after_the_stream_was_dropped_answers_the_usage_consumed(worker: WorkerProcess) -> None:
    body = {"model": "canned", "prompt": "hi there", "max_tokens": 2000, "stream": True}
    headers = {"X-Request-Id": "dropped-1"}
    with httpx2.Client(timeout=30) as client:
        with client.stream(
            "POST", f"{worker.address}/v1/completions", json=body, headers=headers
        ) as response:
            lines = response.iter_lines()
            read = [next(lines) for _ in range(6)]  # three text chunks and the blank lines between
        # What the portal does when its client leaves: drop the stream, then abort.
        aborted = client.post(f"{worker.address}/abort/dropped-1")
        assert aborted.status_code == 200, aborted.text
        usage = aborted.json()["usage"]
        assert usage["prompt_tokens"] == 2
        assert len([line for line in read if line.startswith("data: ")]) <= usage["completion_tokens"] < 2000
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        assert wait_for(lambda: status(worker.address)["in_flight"] == 0, timeout=3)
        later = client.post(f"{worker.address}/abort/dropped-1").json()
        assert later == {"id": "dropped-1", "aborted": False, "usage": later["usage"]}
        assert later["usage"]["completion_tokens"] >= usage["completion_tokens"]
