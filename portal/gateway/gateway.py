"""The Gateway: this portal process's live state in one object, built once at start.

Shaped like the worker's `WorkerContext` (`inference/worker/serving.py`): it
owns the HTTP client toward workers, this portal's in-flight counters and
exclusions, the limit stores, the request queue, the usage writer and the
registry-version watch. State tied to an event loop (connections, the usage
stream, the signed API's slots) lives in `loops`, one style for all of it.

Every door (the OpenAI API, the signed API, the chat page) calls `admit`
(one resolve, one parse, one estimate and reservation: a `Prepared`), then
`run` for one answer or `stream` for server-sent chunks.

`portal/asgi.py` builds one when the process starts; code on the request
path reads it with `current()`. A test builds its own and installs it: a
fresh Gateway starts from empty counters, stores, queues and lookups.
"""

from __future__ import annotations

from typing import Any

import httpx2
from channels.db import database_sync_to_async

from fleet.selectors import list_on_demand_model_names
from portal.gateway import send
from portal.gateway.caller import Caller
from portal.gateway.client import make_client
from portal.gateway.counters import Counters
from portal.gateway.demand import Demand
from portal.gateway.limit_stores import LimitStores
from portal.gateway.per_loop import Loops
from portal.gateway.prepare import Prepared, admit
from portal.gateway.queue import Queues
from portal.gateway.streaming import ChatStream
from registry.services.cache import forget_all
from registry.services.dispatch import list_online_models
from registry.services.last_used import LastUsedThrottle
from registry.services.prefix_index import PrefixIndex
from registry.services.usage_stream import UsageStream
from registry.services.usage_writer import UsageWriter
from registry.services.versions import VersionWatch


class Gateway:
    """Everything this portal process holds between requests."""

    def __init__(self, *, transport: httpx2.AsyncBaseTransport | None = None) -> None:
        forget_all()  # the registry's lookups are per process: a new gateway starts them afresh
        self.loops = Loops()
        self.transport = transport  # in place of the network (tests)
        self.counters = Counters()
        self.demand = Demand()  # this portal's load per model, for the fleet's scheduler
        self.limits = LimitStores(self.loops)
        self.queues = Queues(self.loops)
        self.usage = UsageWriter(lambda url, make: self.loops.get(("usage-stream", url), make))
        self.watch = VersionWatch()
        self.key_touches = LastUsedThrottle()  # last_used_at writes of API keys
        self.app_touches = LastUsedThrottle()  # and of app credentials
        self.credential_warnings: dict[str, float] = {}  # worker identity → when its 401 was logged
        self.prefixes: dict[int, PrefixIndex] = {}  # served model id → its prompts' prefixes (cache_aware)

    def prefix_index(self, model_id: int) -> PrefixIndex:
        """The prefix index of a cache-aware model (one per served model, each bounded)."""
        return self.prefixes.setdefault(model_id, PrefixIndex())

    async def admit(
        self, door: str, caller: Caller, body: Any, *, stream: bool = False, request_id: str | None = None
    ) -> Prepared:
        """One request through `door`, checked once: see `prepare.admit`."""
        return await admit(self, door, caller, body, stream=stream, request_id=request_id)

    async def run(self, prepared: Prepared) -> dict[str, Any]:
        """The worker's whole answer to an admitted request."""
        return await send.run(prepared)

    async def stream(self, prepared: Prepared) -> ChatStream:
        """An admitted streaming request, opened: its first event is in, its chunks follow."""
        stream = ChatStream(self, prepared)
        await stream.open()
        return stream

    async def list_models(self) -> list[dict[str, Any]]:
        """Served models with an online worker or started on a request: id, name, task, created, aliases."""
        return await database_sync_to_async(_online_models)()

    @property
    def client(self) -> httpx2.AsyncClient:
        """The running loop's pooled client toward workers."""
        client = self.loops.get("client", self._make_client)
        if client.is_closed:
            client = self._make_client()
            self.loops.put("client", client)
        return client

    def _make_client(self) -> httpx2.AsyncClient:
        return make_client(self.transport)

    async def close(self) -> None:
        """Stop what runs on the running loop: the usage stream's writer, the client (tests, shutdown)."""
        for key in list(self.loops.keys()):
            value = self.loops.pop(key)
            if isinstance(value, UsageStream):
                await value.stop_writer()
                await value.redis.aclose()
            elif isinstance(value, httpx2.AsyncClient):
                await value.aclose()

    def use_transport(self, transport: httpx2.AsyncBaseTransport) -> None:
        """Send every later request through `transport` (tests)."""
        self.transport = transport
        self.loops.pop("client")


def _online_models() -> list[dict[str, Any]]:
    return list_online_models(on_demand=list_on_demand_model_names())


_installed: Gateway | None = None


def install(gateway: Gateway) -> Gateway:
    """Make `gateway` the one this process serves with."""
    global _installed
    _installed = gateway
    return gateway


def current() -> Gateway:
    """This process's gateway; one is built on first use where start-up did not install one."""
    return _installed or install(Gateway())
