"""Resources that belong to one event loop, kept one per loop.

aiohttp sessions, httpx pools and asyncio locks are bound to the loop that created them. A sink or
a reader is often used first by a submitted batch (photoroom_bg's background loop) and then from
the caller's own loop, so each loop gets its own instance, and each is closed on its own loop:

- by :meth:`PerLoop.aclose`, on the loop that made it (scheduled there, without waiting, when
  that loop's thread is blocked in a sync call: waiting would deadlock a notebook);
- when a loop ends without that (``asyncio.run()`` returns), by the loop's own shutdown of
  async generators, which a keeper generator per resource hooks into;
- for photoroom_bg's background loop, at interpreter exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, TypeVar

from . import _loop

__all__ = ["PerLoop", "close_loop_resources"]

T = TypeVar("T")

_tables: weakref.WeakSet[PerLoop[object]] = weakref.WeakSet()


class _Entry(Generic[T]):
    def __init__(self, item: T) -> None:
        self.item = item
        self.closed = False
        self.keeper: AsyncGenerator[None, None] | None = None


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
        self._items: dict[asyncio.AbstractEventLoop, _Entry[T]] = {}
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}
        self._guard = threading.Lock()
        _tables.add(self)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._items)

    def _lock(self, loop: asyncio.AbstractEventLoop) -> asyncio.Lock:
        with self._guard:
            for gone in [known for known in self._locks if known.is_closed()]:
                del self._locks[gone]
                self._items.pop(gone, None)  # closed by its keeper when the loop shut down
            return self._locks.setdefault(loop, asyncio.Lock())

    async def get(self) -> T:
        """The current loop's resource, made on first use."""
        loop = asyncio.get_running_loop()
        async with self._lock(loop):
            entry = self._items.get(loop)
            if entry is None:
                entry = _Entry(await self._make())
                entry.keeper = self._keeper(entry)
                await entry.keeper.__anext__()  # now the loop finalizes it at shutdown
                self._items[loop] = entry
            return entry.item

    async def _keeper(self, entry: _Entry[T]) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            await self._close_entry(entry)

    async def _close_entry(self, entry: _Entry[T]) -> None:
        if not entry.closed:
            entry.closed = True
            await self._close(entry.item)

    async def aclose(self) -> None:
        """Close every resource, each on its own loop."""
        current = asyncio.get_running_loop()
        with self._guard:
            items = list(self._items.items())
            self._items.clear()
        for loop, entry in items:
            if loop is current:
                await self._close_entry(entry)
            elif loop.is_closed():
                continue  # its keeper closed it when the loop shut down
            elif _loop.is_blocked(loop):
                # its thread waits for us: close it there as soon as it is free again
                asyncio.run_coroutine_threadsafe(self._close_entry(entry), loop)
            elif loop.is_running():
                done = asyncio.run_coroutine_threadsafe(self._close_entry(entry), loop)
                await asyncio.wrap_future(done)

    async def close_current(self) -> None:
        """Close the current loop's resource, if any."""
        loop = asyncio.get_running_loop()
        with self._guard:
            entry = self._items.pop(loop, None)
        if entry is not None:
            await self._close_entry(entry)


async def close_loop_resources() -> None:
    """Close every :class:`PerLoop` resource of the running loop (its shutdown)."""
    for table in list(_tables):
        with contextlib.suppress(Exception):
            await table.close_current()
