"""The worker processes an agent runs: started by it, or adopted from an agent that ran before it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def log_tail(path: str, lines: int = 20) -> str:
    """The last `lines` lines of a log file (its last 8 KiB at most)."""
    try:
        with open(path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 8192))
            text = log.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def is_worker(pid: int, identity: str) -> bool:
    """Whether `pid` runs the worker `identity` (pids are reused: its command line says)."""
    args = command_line(pid)
    return "runworker" in args and f"--worker-id\0{identity}" in "\0".join(args)


class WorkerProcess:
    """One `runworker` process, known by pid; `popen` only when this agent started it."""

    def __init__(self, pid: int, identity: str, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.identity = identity
        self.popen = popen

    @classmethod
    def start(cls, command: list[str], identity: str, log_path: Path) -> WorkerProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            # Its own session: a signal to the agent's process group does not reach it, and an agent
            # killed outright leaves it serving, to be adopted by the next agent.
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(popen.pid, identity, popen)

    @classmethod
    def adopt(cls, pid: int, identity: str) -> WorkerProcess | None:
        """The process `pid` if it is still the worker `identity`."""
        return cls(pid, identity) if is_worker(pid, identity) else None

    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return is_worker(self.pid, self.identity)

    def exit_description(self) -> str:
        if self.popen is None:
            return "exited (an adopted process: its exit code is unknown)"
        code = self.popen.returncode
        if code is not None and code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)
