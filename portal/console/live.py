"""Live dashboard updates: a group message when a heartbeat arrives or a request finishes.

Heartbeats are written by worker processes and usage rows by whichever
portal served the request, so the place that sees both is the database. One
watcher task per portal process, running only while a dashboard is open,
reads two indexed maxima a second (the newest heartbeat, the newest usage
row) and tells the group when either moved. It costs the request path
nothing and works the same with the in-memory and the Redis channel layer.
Each consumer then sends at most one snapshot a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.db.models import Count, Max

from fleet.models import Deployment, DeploymentEvent, Instance
from portal.console.fleet import fleet_snapshot
from registry.models import UsageRecord, Worker
from teams.roles import CONSOLE_PERMISSION
from teams.scoping import UsageScope, usage_scope

logger = logging.getLogger(__name__)

GROUP = "console.fleet"
POLL_SECONDS = 1.0
MIN_SEND_INTERVAL = 1.0  # per client
FORBIDDEN_CLOSE_CODE = 4403


def fleet_signature() -> tuple[Any, ...]:
    """What changes when a heartbeat arrives, a worker or a replica comes, goes or changes state, a
    request finishes, or the autoscaler decides."""
    workers = Worker.objects.aggregate(latest=Max("last_heartbeat"), count=Count("id"))
    last_request = UsageRecord.objects.aggregate(last=Max("id"))["last"]
    instances = Instance.objects.aggregate(latest=Max("updated_at"), count=Count("id"))
    deployments = Deployment.objects.aggregate(latest=Max("updated_at"), count=Count("id"))
    last_event = DeploymentEvent.objects.aggregate(last=Max("id"))["last"]
    return (*workers.values(), last_request, *instances.values(), *deployments.values(), last_event)


class FleetWatch:
    """The per-process watcher: started by the first dashboard client, stopped with the last."""

    def __init__(self) -> None:
        self.clients = 0
        self._task: asyncio.Task[None] | None = None
        self._baseline: asyncio.Future[None] | None = None

    async def attach(self) -> None:
        """Count a client; return once the watcher has read the fleet it compares against.

        The client's first snapshot is read after that, so a change that lands
        between the two is still told (the watcher's first read is its baseline).
        """
        self.clients += 1
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._baseline = loop.create_future()
            self._task = loop.create_task(self._run(self._baseline))
        assert self._baseline is not None
        await asyncio.shield(self._baseline)

    def detach(self) -> None:
        self.clients = max(0, self.clients - 1)
        if self.clients == 0 and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self, baseline: asyncio.Future[None]) -> None:
        layer = get_channel_layer()
        seen = None
        try:
            while True:
                try:
                    signature = await database_sync_to_async(fleet_signature)()
                    if seen is not None and signature != seen:
                        await layer.group_send(GROUP, {"type": "fleet.changed"})
                    seen = signature
                except Exception as exc:  # the database being away must not end the watch
                    logger.warning("Fleet watch: %s", exc)
                if not baseline.done():
                    baseline.set_result(None)
                await asyncio.sleep(POLL_SECONDS)
        finally:
            if not baseline.done():  # cancelled before its first read: no client waits for ever
                baseline.set_result(None)


watch = FleetWatch()


@database_sync_to_async
def _watcher_scope(user: Any) -> UsageScope | None:
    """The teams this user's snapshots show; None when they may not watch the dashboard at all."""
    if not user.has_perm(CONSOLE_PERMISSION):
        return None
    return usage_scope(user)


class FleetConsumer(AsyncJsonWebsocketConsumer):
    """One open dashboard: a snapshot on connect, then one per change, at most one a second."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        scope = None if user is None or not (user.is_active and user.is_staff) else await _watcher_scope(user)
        if scope is None:
            await self.close(code=FORBIDDEN_CLOSE_CODE)
            return
        self.scope_of_teams = scope  # fixed for the connection: a change of team takes a reconnect
        self.last_sent = 0.0
        self.pending: asyncio.Task[None] | None = None
        await self.accept()
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await watch.attach()
        await self.send_snapshot()

    async def disconnect(self, code: int) -> None:
        if not hasattr(self, "pending"):
            return  # refused before accepting
        watch.detach()
        await self.channel_layer.group_discard(GROUP, self.channel_name)
        if self.pending is not None:
            self.pending.cancel()

    async def fleet_changed(self, event: dict[str, Any]) -> None:
        if self.pending is not None and not self.pending.done():
            return  # an update is already on its way
        delay = max(0.0, self.last_sent + MIN_SEND_INTERVAL - time.monotonic())
        self.pending = asyncio.get_running_loop().create_task(self.send_snapshot(delay))

    async def send_snapshot(self, delay: float = 0.0) -> None:
        if delay:
            await asyncio.sleep(delay)
        self.last_sent = time.monotonic()
        snapshot = await database_sync_to_async(fleet_snapshot)(self.scope_of_teams)
        await self.send_json({"type": "fleet.snapshot", **snapshot})
