"""The remote-endpoint probe against a real HTTP server on loopback: it stores our words, never the answer's.

The server answers by the path's first segment, so one server plays every
kind of endpoint: a healthy one, one that fails with a page full of secrets,
one that answers HTML, one that never stops talking, one that hangs, one that
answers a byte at a time, one that hangs up.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from registry.models import Worker, WorkerKind, WorkerStatus
from registry.services import remote
from registry.services.remote import ANSWER_MAX_BYTES, probe_remote_endpoint

pytestmark = pytest.mark.django_db
SECRET = "sk-live-DO-NOT-STORE"


class Endpoint(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        case = self.path.split("/")[1]
        if case == "ok":
            self._answer(200, json.dumps({"object": "list", "data": [{"id": "m"}]}).encode())
        elif case == "failing":
            self._answer(500, f"Traceback: settings.SECRET_KEY={SECRET}".encode())
        elif case == "html":
            self._answer(200, f"<html>login page {SECRET}</html>".encode())
        elif case == "endless":
            self._answer(200, b"[" + b"0," * ANSWER_MAX_BYTES + b"0]")
        elif case == "hanging":
            time.sleep(2)
            self._answer(200, b"{}")
        elif case == "dripping":
            self._drip(b"[" + b"0," * 50 + b"0]")
        elif case == "hanging-up":
            self.connection.shutdown(socket.SHUT_RDWR)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the probe stopped reading (a long answer)
            self.wfile.write(body)

    def _drip(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Endpoint)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(autouse=True)
def short_timeouts(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.GATEWAY_CONNECT_TIMEOUT = 0.5  # each read
    monkeypatch.setattr(remote, "ANSWER_SECONDS", 0.5)  # the whole answer


def probed(address: str) -> Worker:
    worker = Worker.objects.create(
        identity=address, kind=WorkerKind.REMOTE, address=address, status=WorkerStatus.ONLINE
    )
    probe_remote_endpoint(worker=worker)
    worker.refresh_from_db()
    return worker


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_endpoint_that_answers_a_json_model_list_is_online(server: str) -> None:
    worker = probed(f"{server}/ok/v1")
    assert (worker.status, worker.last_error) == (WorkerStatus.ONLINE, "")


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("failing", "HTTP 500 from /failing/v1/models"),
        ("html", "not JSON from /html/v1/models"),
        ("endless", f"answer over {ANSWER_MAX_BYTES} bytes from /endless/v1/models"),
        ("hanging", "timed out (/hanging/v1/models)"),
        ("dripping", "timed out (/dripping/v1/models)"),
        ("hanging-up", "broken answer from /hanging-up/v1/models"),
    ],
)
def test_a_failing_endpoint_is_offline_with_a_fixed_message_and_none_of_its_words(
    server: str, case: str, error: str
) -> None:
    started = time.monotonic()
    worker = probed(f"{server}/{case}/v1")
    assert (worker.status, worker.last_error) == (WorkerStatus.OFFLINE, error)
    assert SECRET not in worker.last_error
    assert time.monotonic() - started < 2


def test_a_closed_port_is_connection_refused() -> None:
    worker = probed(f"http://127.0.0.1:{closed_port()}/v1")
    assert (worker.status, worker.last_error) == (WorkerStatus.OFFLINE, "connection refused (/v1/models)")
