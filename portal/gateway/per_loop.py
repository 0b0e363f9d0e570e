"""One value per running event loop: redis.asyncio connections belong to the loop that opened them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerLoop(Generic[T]):
    """`make()`'s value for the running loop, made on first use; those of closed loops are dropped."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._values: dict[asyncio.AbstractEventLoop, T] = {}

    def get(self) -> T:
        loop = asyncio.get_running_loop()
        value = self._values.get(loop)
        if value is None:
            for old in [other for other in self._values if other.is_closed()]:
                del self._values[old]
            value = self._values[loop] = self._make()
        return value
