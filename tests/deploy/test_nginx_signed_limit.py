"""deploy/nginx/portal.conf: the signed API's per-address rate limit and body cap, served by a real nginx.

nginx runs on loopback (not as a service) with the config's http-level limit
and its proxied locations, as deploy/local-cluster.sh assembles them, in front
of a stand-in portal that counts what reaches it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest

from tests.portal_process import free_port
from tests.processes import REPO_ROOT

CONF = REPO_ROOT / "deploy" / "nginx" / "portal.conf"
BURST = 20


def _block(begin: str, end: str) -> str:
    text = CONF.read_text()
    found = re.search(rf"^[ \t]*# BEGIN {begin}.*?# END {end}[^\n]*\n", text, re.S | re.M)
    assert found, f"{CONF} has no '# BEGIN {begin}' … '# END {end}' block"
    return found[0]


class _Portal(BaseHTTPRequestHandler):
    """Answers every POST with a go-infer success envelope and counts them."""

    hits = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).hits += 1
        body = json.dumps({"appId": "", "code": 0, "success": True, "data": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start nginx (foreground, loopback) in front of a stand-in portal; yield its base URL."""
    if not shutil.which("nginx"):
        pytest.skip("nginx is not installed (apt-get install nginx)")
    directory = tmp_path_factory.mktemp("nginx")
    portal = ThreadingHTTPServer(("127.0.0.1", 0), _Portal)
    threading.Thread(target=portal.serve_forever, daemon=True).start()
    port = free_port()
    # Started by root, nginx's workers would run as nobody (as in deploy/local-cluster.sh).
    user = "user root root;\n" if os.geteuid() == 0 else ""
    (directory / "nginx.conf").write_text(
        f"""{user}daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
{_block("http-level limits", "http-level limits")}
    upstream portal {{ server 127.0.0.1:{portal.server_address[1]}; }}
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    server {{
        listen 127.0.0.1:{port};
{_block("proxied locations", "proxied locations")}
    }}
}}
"""
    )
    process = subprocess.Popen(
        [
            "nginx",
            "-c",
            str(directory / "nginx.conf"),
            "-p",
            str(directory),
            "-e",
            str(directory / "error.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_listening(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        portal.shutdown()


def _wait_until_listening(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"nginx exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            httpx2.get(f"{url}/health", timeout=1)
            return
        except httpx2.TransportError:
            time.sleep(0.1)
    raise AssertionError("nginx did not listen within 10 s")


def test_signed_api_beyond_the_burst_is_429_in_the_envelope_and_never_reaches_a_portal(nginx: str) -> None:
    _Portal.hits = 0
    with httpx2.Client(base_url=nginx, timeout=5) as client:
        started = time.monotonic()
        replies = [client.post("/api/echo", content=b'{"appId": "x"}') for _ in range(BURST + 40)]
        elapsed = time.monotonic() - started

    passed = [r for r in replies if r.status_code == 200]
    limited = [r for r in replies if r.status_code == 429]
    assert len(passed) + len(limited) == len(replies)
    # The burst, plus one request per 100 ms that went by, plus the first.
    assert BURST <= len(passed) <= BURST + 1 + int(elapsed * 10) + 1
    assert limited, f"{len(replies)} requests in {elapsed:.2f} s were all let through"
    assert _Portal.hits == len(passed)
    refusal = limited[0].json()
    assert (refusal["code"], refusal["success"], refusal["appId"]) == (9807, False, "")
    assert "too many requests" in refusal["data"]["msg"]
    assert limited[0].headers["retry-after"] == "1"


def test_other_paths_are_not_limited_by_the_signed_api_zone(nginx: str) -> None:
    with httpx2.Client(base_url=nginx, timeout=5) as client:
        codes = {client.post("/v1/chat/completions", content=b"{}").status_code for _ in range(BURST + 20)}

    assert codes == {200}


def test_a_body_over_one_mebibyte_is_413_in_the_envelope(nginx: str) -> None:
    reply = httpx2.post(f"{nginx}/api/echo", content=b"x" * (1024 * 1024 + 1), timeout=10)

    assert reply.status_code == 413
    assert reply.json()["code"] == 9809
