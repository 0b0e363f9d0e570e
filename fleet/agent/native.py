"""The agent's native llama.cpp: build it once in the background, then roll the llama.cpp workers onto it.

A fresh machine serves at once on the portable xllamacpp wheel. The agent
starts `manage.py build_llamacpp` (niced, in a session of its own, logging to
LOG_DIR/llamacpp-build.log) when this CPU and xllamacpp version have no build
yet; when the build's `build.json` appears and its trial found it faster
than the wheel (or LLAMACPP_NATIVE=on), it asks for a rolling restart of
each deployment whose workers on this node run llama.cpp: their new replicas
load the native build (runworker puts it first on sys.path), one at a time,
so the model stays served. A build slower than the wheel is kept, unused.
A failed build is logged and not retried (the portable wheel keeps serving;
`manage.py build_llamacpp --force` retries). An agent that stops kills a
build still under way; the next one starts it again.

And back: a llama.cpp worker that loaded the build and died of a fault in
native code (SIGILL, SIGSEGV, SIGBUS, SIGFPE) sets the build aside, and its
restart, like every later start on this node, loads the portable wheel. The
trial decodes one model; another model's kernels are first run by a worker.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

from fleet.models import Deployment, Instance
from fleet.services.deployments import restart, worker_prefix
from inference.engines import llamacpp_build
from registry.models import Worker

logger = logging.getLogger(__name__)


class NativeBuild:
    """One node's build: `begin` once, `poll` every tick (True once, when the build has just been adopted)."""

    def __init__(
        self, root: Path, log_path: Path, command: list[str] | None = None, forced: bool = False
    ) -> None:
        self.folder = llamacpp_build.current_dir(root)
        self.forced = forced
        self.log_path = log_path
        self.command = command or [*worker_prefix()[:2], "build_llamacpp"]
        self.process: subprocess.Popen[bytes] | None = None
        self.pending = False

    def begin(self) -> None:
        """Start the build if this machine has none (and no failed one)."""
        folder = self.folder
        if folder is None or llamacpp_build.is_ready(folder) or llamacpp_build.has_failed(folder):
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pending = True
        logger.info("Building llama.cpp for this CPU in the background (log: %s)", self.log_path)

    def poll(self) -> bool:
        """True the first time the build is found ready and adopted; a build that ended unready: given up."""
        if not self.pending or self.folder is None:
            return False
        if llamacpp_build.is_ready(self.folder):
            self.pending = False
            self._reap()
            if llamacpp_build.is_adopted(self.folder, self.forced):
                logger.info("Native llama.cpp ready in %s", self.folder)
                return True
            logger.info("Native llama.cpp built in %s but slower than the wheel: kept unused", self.folder)
            return False
        if self.process is not None and self.process.poll() is not None:
            self.pending = False
            logger.warning("The native llama.cpp build failed; see %s", self.log_path)
        return False

    def in_use(self) -> bool:
        """Whether a llama.cpp worker started now loads this build."""
        return self.folder is not None and llamacpp_build.is_adopted(self.folder, self.forced)

    def set_aside(self, identity: str, how: str) -> None:
        """A worker that loaded this build died of a native fault: later starts load the portable wheel."""
        if self.folder is None or not llamacpp_build.is_ready(self.folder):
            return  # set aside already (another of its workers died first)
        llamacpp_build.set_aside(self.folder, f"{identity} {how} on this build")
        logger.warning(
            "%s %s on the native llama.cpp build: set aside, llama.cpp workers here start on the portable "
            "wheel (`manage.py build_llamacpp --force` builds it again)",
            identity,
            how,
        )

    def stop(self) -> None:
        """Kill a build still under way (its whole session: pip, cmake, the compilers)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self._reap()

    def _reap(self) -> None:
        if self.process is not None:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def restart_llamacpp_deployments(instances: list[Instance]) -> list[Deployment]:
    """A rolling restart of each deployment whose workers among `instances` run llama.cpp."""
    identities = {instance.identity: instance.deployment for instance in instances}
    running = Worker.objects.filter(identity__in=list(identities), backend="llamacpp")
    deployments = {identities[w.identity].pk: identities[w.identity] for w in running}
    for deployment in deployments.values():
        logger.info("Rolling deployment %s onto the native llama.cpp", deployment.name)
        restart(deployment)
    return list(deployments.values())
