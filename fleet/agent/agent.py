"""The node agent: register the machine, run the scheduler, and make this node's instances real.

Each tick (every `interval` seconds) it heartbeats its node, runs the
scheduler, and walks this node's instances:

- wanted and not running: start `runworker` (a free port, logs to a file),
  after the back-off if it crashed before; after MAX_CRASHES crashes in a row
  the instance is failed and keeps its last log lines for the admin;
- wanted and running: starting until its worker row is online, then ready;
- not wanted: ask its worker to drain, exit and delete its row (the admin's
  remove, so every portal stops dispatching to it first), SIGTERM if it has
  no row yet or outstays the drain, and forget the instance once it exited.

An agent that starts adopts the processes a previous agent on this node left
running (their pid and `--worker-id` match), so a restarted agent never
starts duplicates. Stopped with SIGTERM or SIGINT, it drains its workers and
leaves their instances pending, to be started again by the next agent.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone

from fleet import catalogue
from fleet.agent.native import NativeBuild, restart_llamacpp_deployments
from fleet.agent.processes import WorkerProcess, free_port, log_tail
from fleet.models import Instance, InstanceState, Node
from fleet.options import OptionError, check_model_path, check_worker_argv
from fleet.services import nodes, scheduler
from fleet.services.deployments import worker_command, worker_prefix
from portal.env import worker_environment
from registry.models import Worker
from registry.services import workers
from registry.services.controls import remove_workers

logger = logging.getLogger(__name__)

MAX_CRASHES = 5
# Deaths of a fault in native code: what a build that miscompiled, or a kernel that misbehaves, ends in.
NATIVE_FAULTS = frozenset({signal.SIGILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE})
MAX_BACKOFF_SECONDS = 60.0
STABLE_AFTER = timedelta(seconds=60)  # ready this long: its crash count starts again from zero
CATALOGUE_EVERY = 60.0  # seconds between rescans of the model folders


def backoff(crashes: int, first: float = 1.0) -> float:
    """Seconds before the next start after `crashes` crashes in a row: `first`, twice that, ... 60."""
    return min(MAX_BACKOFF_SECONDS, first * 2.0 ** max(0, crashes - 1))


@dataclass
class AgentOptions:
    name: str
    address: str = "127.0.0.1"
    worker_host: str = "127.0.0.1"
    labels: dict[str, str] = field(default_factory=dict)
    model_dirs: list[str] = field(default_factory=list)
    log_dir: Path = Path("var/log/instances")
    interval: float = 2.0
    restart_backoff: float = 1.0  # seconds before the first restart of a crashed worker
    drain_timeout: float = 30.0
    heartbeat_interval: float = 5.0
    llamacpp_build_dir: Path | None = None  # where the native llama.cpp is built and cached; None: no build
    llamacpp_native_forced: bool = False  # roll onto a ready build even where its trial found it slower


class Agent:
    def __init__(self, options: AgentOptions) -> None:
        self.options = options
        self.node: Node | None = None
        self.processes: dict[int, WorkerProcess] = {}  # instance pk → its process
        self.stop_deadlines: dict[int, float] = {}
        self.stopping = threading.Event()
        self._catalogue_at = 0.0
        self.native: NativeBuild | None = None
        if options.llamacpp_build_dir is not None:
            self.native = NativeBuild(
                options.llamacpp_build_dir,
                options.log_dir.parent / "llamacpp-build.log",
                forced=options.llamacpp_native_forced,
            )

    # The loop

    def run(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stopping.set())
        self.register()
        self.adopt()
        if self.native is not None:
            self.native.begin()
        while not self.stopping.is_set():
            self.tick()
            self.stopping.wait(self.options.interval)
        self.shut_down()

    def tick(self) -> None:
        """One heartbeat, one scheduler run, one pass over this node's instances; never raises."""
        try:
            close_old_connections()
            self.heartbeat()
            scheduler.reconcile()
            self.supervise()
            self.roll_onto_native()
        except DatabaseError as exc:
            # Workers keep serving through a database outage; the next tick tries again.
            logger.warning("Database unavailable: %s", exc)

    def roll_onto_native(self) -> None:
        """Once the native llama.cpp build is adopted: a rolling restart of this node's llama.cpp workers."""
        if self.native is not None and self.native.poll():
            try:
                restart_llamacpp_deployments(self.mine())
            except DatabaseError:
                self.native.pending = True  # the next tick tries again
                raise

    # Node

    def facts(self) -> nodes.NodeFacts:
        total, available = catalogue.memory()
        return nodes.NodeFacts(
            name=self.options.name,
            address=self.options.address,
            labels=self.options.labels,
            cpus=catalogue.cpus(),
            memory_bytes=total,
            available_memory_bytes=available,
            gpus=catalogue.gpus(),
            catalogue=catalogue.catalogue(self.options.model_dirs),
            agent_pid=os.getpid(),
        )

    def register(self) -> None:
        while not self.stopping.is_set():
            try:
                self.node = nodes.register_node(facts=self.facts(), interval=self.options.heartbeat_interval)
                self._catalogue_at = time.monotonic()
                logger.info("Node %s registered", self.node.name)
                return
            except DatabaseError as exc:
                logger.warning("Cannot register the node yet: %s", exc)
                self.stopping.wait(self.options.interval)

    def heartbeat(self) -> None:
        assert self.node is not None
        if time.monotonic() - self._catalogue_at > CATALOGUE_EVERY:
            self.register()  # the catalogue and the machine's figures again
            return
        _, available = catalogue.memory()
        beat = nodes.record_node_heartbeat(
            node_id=self.node.pk, available_memory_bytes=available, interval=self.options.heartbeat_interval
        )
        if not beat:
            self.register()

    # Instances

    def mine(self) -> list[Instance]:
        assert self.node is not None
        return list(Instance.objects.filter(node=self.node).select_related("deployment", "node"))

    def adopt(self) -> None:
        """Take over the workers a previous agent on this node left running."""
        for instance in self.mine():
            if instance.pid and (
                process := WorkerProcess.adopt(instance.pid, instance.command, instance.process_start)
            ):
                self.processes[instance.pk] = process
                logger.info("Adopted %s (pid %d)", instance.identity, instance.pid)

    def supervise(self) -> None:
        instances = self.mine()
        # A worker is up when its row is online with the pid of the process we know (after a crash, the
        # old process's row looks online until it expires).
        alive = set(
            Worker.objects.online()
            .filter(identity__in=[i.identity for i in instances])
            .values_list("identity", "pid")
        )
        known = {i.pk for i in instances}
        for pk in [pk for pk in self.processes if pk not in known]:
            # Its row is gone (the node was forgotten during an outage): it must not serve twice.
            self.processes.pop(pk).signal(signal.SIGTERM)
        for instance in instances:
            try:
                if instance.wanted:
                    self.keep(instance, (instance.identity, instance.pid) in alive)
                else:
                    self.retire(instance)
            except DatabaseError:
                raise
            except Exception:  # one replica that cannot start (a full disk, a bad path) stops no other
                logger.exception("Supervising %s failed", instance.identity)

    def keep(self, instance: Instance, worker_online: bool) -> None:
        process = self.processes.get(instance.pk)
        now = timezone.now()
        if process is not None and process.running():
            if instance.state != InstanceState.READY and worker_online:
                self.update(instance, state=InstanceState.READY, ready_at=now, detail="")
            elif instance.state == InstanceState.STARTING:
                self.update(instance, detail=log_tail(instance.log_path, 1)[:500])
            elif instance.crashes_in_a_row and instance.ready_at and now - instance.ready_at > STABLE_AFTER:
                self.update(instance, crashes_in_a_row=0)
            return
        if process is not None:
            self.processes.pop(instance.pk)
            self.crashed(instance, process.exit_description())
            self.blame_native_build(instance, process)
        elif instance.state in (InstanceState.STARTING, InstanceState.READY):
            self.crashed(instance, "was not running when this agent started")
        if instance.state in (InstanceState.PENDING, InstanceState.CRASHED) and (
            instance.next_start_at is None or instance.next_start_at <= now
        ):
            self.start(instance)

    def crashed(self, instance: Instance, how: str) -> None:
        # Its row would look online until its heartbeat expires: portals stop dispatching to it now.
        workers.mark_offline(identity=instance.identity, error=how)
        crashes = instance.crashes_in_a_row + 1
        failed = crashes >= MAX_CRASHES
        logger.warning("%s %s (%d in a row)%s", instance.identity, how, crashes, "; failed" if failed else "")
        self.update(
            instance,
            state=InstanceState.FAILED if failed else InstanceState.CRASHED,
            crashes_in_a_row=crashes,
            next_start_at=timezone.now() + timedelta(seconds=backoff(crashes, self.options.restart_backoff)),
            detail=f"{how}; " + (f"gave up after {crashes} crashes in a row" if failed else "restarting"),
            log_tail=log_tail(instance.log_path),
            pid=None,
        )

    def blame_native_build(self, instance: Instance, process: WorkerProcess) -> None:
        """Set the native llama.cpp build aside if a llama.cpp worker on it died of a native fault."""
        if self.native is None or not process.on_native_build or process.killed_by() not in NATIVE_FAULTS:
            return
        # `auto` may have chosen another engine: its registration (if it got that far) says which.
        ran_llamacpp = instance.deployment.backend == "llamacpp" or (
            Worker.objects.filter(identity=instance.identity, backend="llamacpp").exists()
        )
        if ran_llamacpp:
            self.native.set_aside(instance.identity, process.exit_description())

    def start(self, instance: Instance) -> None:
        options = self.options
        port = free_port(options.worker_host)
        address = (
            None if options.address in ("127.0.0.1", "localhost") else f"http://{options.address}:{port}"
        )
        try:
            command = worker_command(instance, port=port, host=options.worker_host, address=address)
            self.check_start(instance, command)
        except OptionError as exc:
            logger.error("Refusing to start %s: %s", instance.identity, exc)
            self.update(instance, state=InstanceState.FAILED, detail=f"Refused: {exc}"[:500], pid=None)
            return
        log_path = options.log_dir / f"{instance.deployment.name}-{instance.pk}.log"
        process = WorkerProcess.start(command, worker_environment(secrets.token_urlsafe(50)), log_path)
        process.on_native_build = self.native is not None and self.native.in_use()
        self.processes[instance.pk] = process
        restarted = instance.state == InstanceState.CRASHED
        logger.info("Started %s on port %d (pid %d)", instance.identity, port, process.pid)
        self.update(
            instance,
            state=InstanceState.STARTING,
            port=port,
            pid=process.pid,
            process_start=process.started,
            command=command,
            started_at=timezone.now(),
            log_path=str(log_path),
            detail="starting",
            restarts=instance.restarts + restarted,
        )

    def check_start(self, instance: Instance, command: list[str]) -> None:
        """Refuse (OptionError) to run an option outside the allow-list or a model this node may not serve.

        The deployment was checked when it was saved; this is the last word, on the node that runs it.
        """
        assert self.node is not None
        check_worker_argv(command, prefix=worker_prefix())
        deployment = instance.deployment
        check_model_path(
            deployment.model_path,
            backend=deployment.backend,
            catalogue=[entry["path"] for entry in self.node.catalogue],
            hub_orgs=settings.FLEET_HUB_ORGS,
        )

    def retire(self, instance: Instance) -> None:
        process = self.processes.get(instance.pk)
        if process is None or not process.running():
            self.processes.pop(instance.pk, None)
            self.stop_deadlines.pop(instance.pk, None)
            Worker.objects.filter(identity=instance.identity).delete()
            instance.delete()
            logger.info("Stopped %s", instance.identity)
            return
        deadline = self.stop_deadlines.get(instance.pk)
        if deadline is None:
            self.update(instance, state=InstanceState.STOPPING, detail="draining")
            worker_ids = list(
                Worker.objects.online().filter(identity=instance.identity).values_list("pk", flat=True)
            )
            if worker_ids:
                remove_workers(worker_ids=worker_ids)  # portals stop dispatching; the worker drains and exits
            else:
                process.signal(signal.SIGTERM)
            grace = self.options.drain_timeout + 3 * self.options.heartbeat_interval + 5
            self.stop_deadlines[instance.pk] = time.monotonic() + grace
        elif time.monotonic() > deadline:
            process.signal(signal.SIGKILL if time.monotonic() > deadline + 10 else signal.SIGTERM)

    def update(self, instance: Instance, **fields: object) -> None:
        for name, value in fields.items():
            setattr(instance, name, value)
        Instance.objects.filter(pk=instance.pk).update(**fields, updated_at=timezone.now())

    # Shutting down

    def shut_down(self) -> None:
        """Drain every worker this agent runs; their instances wait, pending, for the next agent."""
        logger.info("Stopping %d worker(s)", len(self.processes))
        if self.native is not None:
            self.native.stop()
        for process in self.processes.values():
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.options.drain_timeout + 5
        while any(p.running() for p in self.processes.values()) and time.monotonic() < deadline:
            time.sleep(0.2)
        for process in self.processes.values():
            if process.running():
                process.signal(signal.SIGKILL)
        try:
            close_old_connections()
            Instance.objects.filter(pk__in=list(self.processes)).update(
                state=InstanceState.PENDING, pid=None, detail="its agent stopped", next_start_at=None
            )
            if self.node is not None:
                nodes.mark_node_offline(node_id=self.node.pk)
        except DatabaseError as exc:
            logger.warning("Could not record the stop: %s", exc)
