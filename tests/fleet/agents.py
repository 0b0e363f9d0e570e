"""A real `manage.py runagent` child for tests, and the worker processes it leaves behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from fleet.agent.processes import command_line
from tests.processes import REPO_ROOT, database_url, subprocess_env, wait_for

# AGENT_ONLY_SECRET stands for the agent's own secrets, which its workers must not inherit.
# LLAMACPP_NATIVE off: no agent here starts a native llama.cpp build (minutes of compiling).
AGENT_ENV = {
    "HEARTBEAT_INTERVAL": "1",
    "WORKER_DRAIN_TIMEOUT": "10",
    "AGENT_ONLY_SECRET": "agent-only",
    "LLAMACPP_NATIVE": "off",
}
# Quick ticks and restarts: the tests wait on what the agent does, not on its timers.
AGENT_TIMERS = ("--interval", "0.5", "--restart-backoff", "0.1")


class AgentProcess:
    def __init__(
        self,
        name: str,
        log_dir: Path,
        model_dirs: list[Path] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="agent-", suffix=".log", delete=False)  # noqa: SIM115
        dirs = ",".join(str(d) for d in model_dirs or [])
        env = subprocess_env({**AGENT_ENV, "LOG_DIR": str(log_dir), "MODEL_DIRS": dirs, **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "runagent", "--name", name, *AGENT_TIMERS],
            cwd=REPO_ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text()[-20000:]

    def stop(self, timeout: float = 40) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def environment_of(pid: int) -> dict[str, str]:
    try:
        variables = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return {}
    return dict(v.split("=", 1) for v in variables if "=" in v)


def workers_of(deployment: str) -> list[int]:
    """Pids of this test's runworker processes of `deployment` (their --worker-id starts with its name).

    Only those on this test's database: a test beside it (the Kubernetes one) may run a
    deployment of the same name.
    """
    found = []
    for pid in (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()):
        args = command_line(pid)
        ours = any(a.startswith(f"--worker-id={deployment}/") for a in args) and "runworker" in args
        if ours and environment_of(pid).get("DATABASE_URL") == database_url():
            found.append(pid)
    return found


def kill_workers_of(deployment: str) -> None:
    for pid in workers_of(deployment):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not workers_of(deployment), timeout=10)
