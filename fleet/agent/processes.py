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
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").rstrip("\0").split("\0")
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


def start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks after boot (/proc/PID/stat's 22nd field); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # The command name (field 2) may hold spaces and parentheses: count from its closing one.
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def is_worker(pid: int, command: list[str], started: int | None) -> bool:
    """Whether `pid` is still the process started as `command` at `started` (pids are reused)."""
    return started is not None and command_line(pid) == command and start_time(pid) == started


class WorkerProcess:
    """One `runworker` process, known by pid, argv and start time; `popen` only when this agent started it."""

    def __init__(
        self, pid: int, command: list[str], started: int | None, popen: subprocess.Popen[bytes] | None = None
    ) -> None:
        self.pid = pid
        self.command = command
        self.started = started
        self.popen = popen
        self.on_native_build = False  # started while the native llama.cpp build was in use

    @classmethod
    def start(cls, command: list[str], environment: dict[str, str], log_path: Path) -> WorkerProcess:
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
                env=environment,
            )
        return cls(popen.pid, command, start_time(popen.pid), popen)

    @classmethod
    def adopt(cls, pid: int, command: list[str], started: int | None) -> WorkerProcess | None:
        """The process `pid` if it is still the one started as `command` at `started`."""
        return cls(pid, command, started) if command and is_worker(pid, command, started) else None

    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return is_worker(self.pid, self.command, self.started)

    def exit_description(self) -> str:
        if self.popen is None:
            return "exited (an adopted process: its exit code is unknown)"
        killer = self.killed_by()
        if killer is not None:
            return f"killed by {killer.name}"
        return f"exited with code {self.popen.returncode}"

    def killed_by(self) -> signal.Signals | None:
        """The signal that ended it (a process this agent started and reaped); None otherwise."""
        code = self.popen.returncode if self.popen is not None else None
        return signal.Signals(-code) if code is not None and code < 0 else None

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)
