"""Serve a `WorkerContext` with uvicorn: self-check, register, heartbeat, drain on SIGTERM.

uvicorn on uvloop with httptools, as vLLM's server runs: the worker's event
loop relays every token, and this stack takes a third less of its CPU a
token than daphne's Twisted reactor did (0.33–0.40 against 0.50–0.54 ms at
one stream, 0.12 against 0.18 at sixteen: README, "llama.cpp: native and
portable builds"), CPU the model's threads get back on a small machine. The
portal stays on daphne (Channels).

Start order: the socket listens → engine started on the server's loop → the
advertised address is called back (GET /health must return our nonce) → the
row is registered → `WORKER READY <address>` is printed. Stop order on
SIGTERM/SIGINT: draining (row and /health) → in-flight requests finish,
bounded by the drain timeout → row offline → server stopped → exit 0. A
second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import httpx2
import uvicorn
import uvloop

from inference.worker.app import build_app
from inference.worker.heartbeat import Heartbeat
from inference.worker.serving import WorkerContext
from registry.models import WorkerIntent
from registry.services import workers

logger = logging.getLogger(__name__)
LISTEN_BACKLOG = 2048  # uvicorn's own default
KEEP_ALIVE_SECONDS = 75


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


class QuietServer(uvicorn.Server):
    """uvicorn's server without its signal handlers: SIGTERM drains the worker first (`WorkerServer`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WorkerServer:
    """One uvicorn server around the worker app, with the registry lifecycle around it."""

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
        try:
            self.listener = socket.create_server(
                (self.options.host, self.options.port),
                family=socket.AF_INET6 if ":" in self.options.host else socket.AF_INET,
                backlog=LISTEN_BACKLOG,
            )
        except OSError as exc:
            where = f"{self.options.host}:{self.options.port}"
            raise StartupError(f"Could not listen on {where}: {exc}") from None
        config = uvicorn.Config(
            build_app(self.ctx),
            loop="none",  # uvloop.run below makes the loop
            http="httptools",
            lifespan="off",
            log_config=None,  # Django's logging configuration stays
            access_log=False,
            server_header=False,
            # Longer than the portal keeps an idle connection (30 s), so the worker never closes one
            # the portal is about to reuse.
            timeout_keep_alive=KEEP_ALIVE_SECONDS,
            timeout_graceful_shutdown=5,
        )
        self.server = QuietServer(config)
        for signum in (signal.SIGTERM, signal.SIGINT):  # until the loop runs and drains on them
            signal.signal(signum, self._exit_on_signal)
        try:
            uvloop.run(self._serve())
        finally:
            # The loop has stopped: no event loop runs, so the sync ORM is fine here.
            if self.heartbeat is not None:
                self.heartbeat.stop()
                self.heartbeat.mark(workers.mark_offline)
        if self.error:
            raise StartupError(self.error)

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self._begin_drain)
        # The socket already listens: the self-check's connection waits in its backlog until
        # uvicorn accepts.
        starting = self.loop.create_task(self._start())
        await self.server.serve(sockets=[self.listener])
        if not starting.done():  # stopped by a signal while starting
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting

    def stop(self, now: bool = False) -> None:
        """End `serve`: after the connections close (5 s at most), or at once."""
        self.server.should_exit = True
        if now:
            self.server.force_exit = True

    async def _start(self) -> None:
        try:
            port = self.listener.getsockname()[1]
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
            self.stop()

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

    def _exit_on_signal(self, signum: int, frame: FrameType | None) -> None:
        """Before the loop runs there is nothing to drain; once it runs, its own handlers drain."""
        sys.exit(128 + signum)

    def _begin_drain(self) -> None:
        if self._drain_task is not None:
            logger.warning("Second signal: stopping without waiting for requests in flight")
            self.stop(now=True)
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
        self.stop()  # `run` marks the row offline once the loop is done

    async def _wait_idle(self, timeout: float) -> None:
        deadline = self.loop.time() + timeout
        # Polling: the counters change in many places, and 50 ms is nothing next to a drain.
        while (self.ctx.requests_in_progress or self.ctx.active) and self.loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
