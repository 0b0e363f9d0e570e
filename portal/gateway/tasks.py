"""Background tasks of the gateway: run a coroutine without awaiting it, keeping a reference."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

_background: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """Run `coro` in the background, holding a reference until it ends (the loop keeps only a weak one)."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


async def drain() -> None:
    """Wait for the background tasks of the running loop, those they start included (tests)."""
    loop = asyncio.get_running_loop()
    while pending := [t for t in _background if t.get_loop() is loop and not t.done()]:
        await asyncio.wait(pending)
