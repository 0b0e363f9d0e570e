"""Serve a `WorkerContext` with daphne: self-check, register, heartbeat, drain on SIGTERM.

Start order: engine started on daphne's loop → the advertised address is
called back (GET /health must return our nonce) → the row is registered →
`WORKER READY <address>` is printed. Stop order on SIGTERM/SIGINT: draining
(row and /health) → in-flight requests finish, bounded by the drain timeout →
row offline → reactor stopped → exit 0. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from dataclasses import dataclass
from types import FrameType
from typing import Any

import httpx2

from inference.worker.app import build_app
from inference.worker.heartbeat import Heartbeat
from inference.worker.serving import WorkerContext
from registry.models import WorkerIntent
from registry.services import workers

logger = logging.getLogger(__name__)


class StartupError(Exception):
    """The worker cannot serve; the message is one line for the operator."""


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 0
    worker_address: str | None = None
    worker_id: str | None = None
    register: bool = True
    heartbeat_interval: float = 5.0
    drain_timeout: float = 30.0


def default_address(host: str, port: int) -> str:
    reachable = socket.getfqdn() if host in ("0.0.0.0", "", "::") else host
    return f"http://{reachable}:{port}"


class WorkerServer:
    """One daphne server around the worker app, with the registry lifecycle around it."""

    def __init__(self, ctx: WorkerContext, options: ServeOptions, registration: dict[str, Any]) -> None:
        self.ctx = ctx
        self.options = options
        self.registration_fields = registration  # WorkerRegistration fields but identity/address
        self.heartbeat: Heartbeat | None = None
        self.error: str | None = None
        self.address = ""
        self._drain_task: asyncio.Task[None] | None = None
        self._hold_task: asyncio.Task[None] | None = None

    def run(self) -> None:
        """Serve until drained; raise StartupError if the worker never became ready."""
        from daphne.server import Server  # installs the asyncio reactor: import late, once

        endpoint = f"tcp:port={self.options.port}:interface={self.options.host}"
        self.server = Server(
            build_app(self.ctx),
            endpoints=[endpoint],
            signal_handlers=False,
            ready_callable=self._ready,
            verbosity=0,
            application_close_timeout=5,
        )
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            self.server.run()
        finally:
            # The reactor has stopped: no event loop runs, so the sync ORM is fine here.
            if self.heartbeat is not None:
                self.heartbeat.stop()
                self.heartbeat.mark(workers.mark_offline)
        if self.error:
            raise StartupError(self.error)

    def _ready(self) -> None:
        from twisted.internet import reactor

        self.loop = asyncio.get_event_loop()
        reactor.callWhenRunning(lambda: self.loop.create_task(self._start()))

    async def _start(self) -> None:
        try:
            if not self.server.listening_addresses:
                raise StartupError(f"Could not listen on {self.options.host}:{self.options.port}.")
            port = self.server.listening_addresses[0][1]
            address = self.options.worker_address or default_address(self.options.host, port)
            self.address = address.rstrip("/")
            await self.ctx.engine.start()
            await self._self_check()
            self.ctx.worker_id = self.options.worker_id or f"{socket.gethostname()}@{self.address}"
            if self.options.register:
                await self._register()
            print(f"WORKER READY {self.address}", flush=True)
        except Exception as exc:
            self.error = str(exc) if isinstance(exc, StartupError) else f"{type(exc).__name__}: {exc}"
            self.server.stop()

    async def _self_check(self) -> None:
        """Call ourselves at the advertised address: a wrong --worker-address fails here, not later."""
        url = f"{self.address}/health"
        try:
            async with httpx2.AsyncClient(timeout=5.0, trust_env=False) as client:
                response = await client.get(url)
            nonce = response.json().get("nonce")
        except (httpx2.HTTPError, ValueError, AttributeError) as exc:
            raise StartupError(
                f"The worker address {self.address} does not reach this worker ({type(exc).__name__}); "
                "fix --worker-address."
            ) from None
        if nonce != self.ctx.nonce:
            raise StartupError(
                f"The worker address {self.address} answers, but it is another process; fix --worker-address."
            )

    async def _register(self) -> None:
        registration = workers.WorkerRegistration(
            identity=self.ctx.worker_id, address=self.address, **self.registration_fields
        )
        self.heartbeat = Heartbeat(
            registration=registration,
            stats=self.ctx.stats,
            interval=self.options.heartbeat_interval,
            on_intent=self._intent_from_thread,
        )
        await asyncio.to_thread(self.heartbeat.beat)  # registers, or logs the outage and retries later
        self.heartbeat.start()

    def _intent_from_thread(self, intent: str) -> None:
        self.loop.call_soon_threadsafe(self._follow_intent, intent)

    def _follow_intent(self, intent: str) -> None:
        """Act on the operator's intent from the admin (read with each heartbeat)."""
        if intent == WorkerIntent.REMOVE:
            if self._drain_task is None:
                logger.info("Removed by an operator: draining, then exiting")
                self._begin_drain()
        elif intent == WorkerIntent.DRAIN and not self.ctx.held:
            logger.info("Drained by an operator: %d request(s) in progress", self.ctx.requests_in_progress)
            self.ctx.held = True
            self._hold_task = self.loop.create_task(self._hold())
        elif intent == WorkerIntent.SERVE and self.ctx.held:
            logger.info("Resumed by an operator")
            self.ctx.held = False

    async def _hold(self) -> None:
        """Once what was in flight has finished, report offline; stay up, beating, until resumed."""
        while self.ctx.held and (self.ctx.requests_in_progress or self.ctx.active):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self.ctx.held and self.heartbeat is not None:
            await asyncio.to_thread(self.heartbeat.mark, workers.mark_drained)
            logger.info("Drained: offline until resumed")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        loop = getattr(self, "loop", None)
        if loop is None or not loop.is_running():
            sys.exit(128 + signum)
        loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if self._drain_task is not None:
            logger.warning("Second signal: stopping without waiting for requests in flight")
            self.server.stop()
            return
        self._drain_task = self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        self.ctx.draining = True
        logger.info("Draining: %d request(s) in progress", self.ctx.requests_in_progress)
        if self.heartbeat is not None:
            self.heartbeat.draining = True
            await asyncio.to_thread(self.heartbeat.mark, workers.mark_draining)
        await self._wait_idle(self.options.drain_timeout)
        if self.ctx.active:
            logger.warning("Drain timeout: aborting %d request(s)", len(self.ctx.active))
            for generation in list(self.ctx.active.values()):
                await generation.abort()
            await self._wait_idle(2.0)
        try:
            await asyncio.wait_for(self.ctx.engine.shutdown(), timeout=10)
        except Exception:
            logger.exception("Engine shutdown failed")
        logger.info("Drained; stopping")
        self.server.stop()  # `run` marks the row offline once the reactor is down

    async def _wait_idle(self, timeout: float) -> None:
        deadline = self.loop.time() + timeout
        # Polling: the counters change in many places, and 50 ms is nothing next to a drain.
        while (self.ctx.requests_in_progress or self.ctx.active) and self.loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
