"""Resources that belong to one event loop, kept one per loop.

aiohttp sessions, httpx pools and asyncio locks are bound to the loop that created them. A sink or
a reader is often used first by a submitted batch (photoroom_bg's background loop) and then from
the caller's own loop, so each loop gets its own instance, and each is closed on its own loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


class PerLoop(Generic[T]):
    """One lazily made ``T`` per running event loop.

    Args:
        make: creates the resource on the current loop.
        close: releases one resource; awaited on the loop that made it.
    """

    def __init__(
        self, make: Callable[[], Awaitable[T]], close: Callable[[T], Awaitable[object]]
    ) -> None:
        self._make = make
        self._close = close
        self._items: dict[asyncio.AbstractEventLoop, T] = {}
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._guard = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def _lock(self, loop: asyncio.AbstractEventLoop) -> asyncio.Lock:
        with self._guard:
            for gone in [known for known in self._locks if known.is_closed()]:
                del self._locks[gone]
                self._items.pop(gone, None)  # its sockets were closed with its loop
            return self._locks.setdefault(loop, asyncio.Lock())

    async def get(self) -> T:
        """The current loop's resource, made on first use."""
        loop = asyncio.get_running_loop()
        async with self._lock(loop):
            if loop not in self._items:
                self._items[loop] = await self._make()
            return self._items[loop]

    async def aclose(self) -> None:
        """Close every resource, each on its own loop (those of closed loops are dropped)."""
        current = asyncio.get_running_loop()
        with self._guard:
            items = list(self._items.items())
            self._items.clear()
        for loop, item in items:
            if loop is current:
                await self._close(item)
            elif loop.is_running():
                done = asyncio.run_coroutine_threadsafe(_call(self._close, item), loop)
                await asyncio.wrap_future(done)


async def _call(close: Callable[[T], Awaitable[object]], item: T) -> None:
    await close(item)
