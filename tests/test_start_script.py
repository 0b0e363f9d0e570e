"""`scripts/start` stops everything it started when it gets Ctrl-C (SIGINT) or SIGTERM.

The script runs as a user runs it, in a session of its own, on the embedded
default (its own SQLite, .env and logs in a temporary folder) with both packaged
models, converted once in the run's model cache (MODEL_CACHE_DIR, as a user
may set). While a chat websocket is open and a streamed completion is in
flight, the signal goes to the script's whole process group, as a terminal's
Ctrl-C does; within 30 s no process that carries the run's marker may be left. The
same holds when its output goes through `| tee` and tee is gone first. The runs
share one var folder and .env, as a user's starts do: the first run sets them
up, the later ones start again on what the earlier ones left.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import IO

import httpx2
import pytest

from tests.portal_process import free_port
from tests.processes import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
READY_LINE = "The portal is up"
STOP_SECONDS = 30


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries `marker` (every process the script started does)."""
    found = []
    needle = f"START_SCRIPT_MARKER={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runs' var folder and .env."""
    return tmp_path_factory.mktemp("start-script")


def script_env(home: Path, marker: str, port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "SECRET_KEY", "WORKER_TOKEN"}
    }
    env.update(
        START_SCRIPT_MARKER=marker,
        SKIP_INSTALL="1",
        PORT=str(port),
        DRAIN_SECONDS="10",
        PORTAL_VAR_DIR=str(home / "var"),
        ENV_FILE=str(home / ".env"),
        CHAT_ALLOW_ANONYMOUS="true",
    )
    return env


def wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        output = log.read_text()
        if text in output:
            return output
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"scripts/start did not print {text!r}:\n{log.read_text()[-5000:]}")


def api_key(output: str) -> str:
    return next(word for word in output.split() if word.startswith("sk-"))


def open_chat_socket(base: str, port: int) -> socket.socket:
    """An accepted chat websocket (anonymous visitor with a session), held open by the caller."""
    cookies = httpx2.get(f"{base}/chat/", timeout=10).cookies
    cookie = "; ".join(f"{name}={value}" for name, value in cookies.items())
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/chat/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {base}\r\nCookie: {cookie}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert sock.recv(1024).startswith(b"HTTP/1.1 101"), "the chat websocket was not accepted"
    return sock


def stream_in_background(base: str, key: str, started: threading.Event) -> threading.Thread:
    """A long streamed completion that is still running when the signal arrives."""

    def run() -> None:
        body = {
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 400,
            "stream": True,
        }
        headers = {"Authorization": f"Bearer {key}"}
        try:
            with httpx2.stream(
                "POST", f"{base}/v1/chat/completions", json=body, headers=headers, timeout=60
            ) as r:
                for _ in r.iter_lines():
                    started.set()
        except httpx2.HTTPError:
            pass  # the portal going away ends the stream; what matters is that processes end
        finally:
            started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch(home: Path, marker: str, port: int, stdout: IO[bytes]) -> subprocess.Popen:
    """scripts/start, writing to `stdout`, as a terminal's foreground job."""
    return subprocess.Popen(
        [str(REPO_ROOT / "scripts" / "start")],
        cwd=REPO_ROOT,
        env=script_env(home, marker, port),
        stdout=stdout,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a group of its own, like a terminal's foreground job
        # As a terminal starts it: a suite launched in the background (nohup, `&`) has
        # SIGINT ignored, and a shell cannot trap a signal ignored when it started.
        preexec_fn=default_sigint,
    )


def assert_all_stop(proc: subprocess.Popen, marker: str, sig: signal.Signals, log: Path) -> None:
    """Send `sig` to the script's group; within STOP_SECONDS no marked process may be left."""
    os.killpg(proc.pid, sig)
    deadline = time.monotonic() + STOP_SECONDS
    while marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = marked_pids(marker)
    assert left == [], f"still running {STOP_SECONDS} s after {sig.name}: {left}\n{log.read_text()[-3000:]}"
    assert proc.wait(5) is not None


def kill_what_is_left(proc: subprocess.Popen, marker: str) -> None:
    for pid in marked_pids(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signal_stops_every_process_the_script_started(
    home: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    marker, port, log = uuid.uuid4().hex, free_port(), tmp_path / "start.log"
    with log.open("wb") as out:
        proc = launch(home, marker, port, out)
    try:
        output = wait_for_line(log, READY_LINE, proc, timeout=300)
        base = f"http://127.0.0.1:{port}"
        chat_socket = open_chat_socket(base, port)
        started = threading.Event()
        streamer = stream_in_background(base, api_key(output), started)
        assert started.wait(60), "the streamed completion did not start"
        assert len(marked_pids(marker)) >= 6  # the script, the agent, two workers, qcluster, daphne

        assert_all_stop(proc, marker, sig, log)
        chat_socket.close()
        streamer.join(10)
    finally:
        kill_what_is_left(proc, marker)


def test_ctrl_c_stops_everything_when_the_output_pipe_is_gone_first(home: Path, tmp_path: Path) -> None:
    """`scripts/start | tee start.log`, then Ctrl-C: tee ends first, the script writes to a closed pipe."""
    marker, log = uuid.uuid4().hex, tmp_path / "start.log"
    tee = subprocess.Popen(["tee", str(log)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert tee.stdin is not None
    proc = launch(home, marker, free_port(), tee.stdin)
    tee.stdin.close()  # the script holds the pipe's only write end
    try:
        wait_for_line(log, READY_LINE, proc, timeout=300)
        assert len(marked_pids(marker)) >= 6
        tee.kill()
        tee.wait(5)
        assert_all_stop(proc, marker, signal.SIGINT, log)
        assert proc.returncode == 130  # stopped by its handler, not killed by SIGPIPE
    finally:
        kill_what_is_left(proc, marker)
        if tee.poll() is None:
            tee.kill()
