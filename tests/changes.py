"""Waiting, without polling, until something a test server counts reaches a value."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Changes"]


class Changes:
    """Woken at every :meth:`notify`; :meth:`wait_for` waits for a condition to hold."""

    def __init__(self, deadline: float = 30.0) -> None:
        self.deadline = deadline  # generous: only something broken gets anywhere near it
        self._changed = asyncio.Event()

    def notify(self) -> None:
        """Something changed: wake whoever waits."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds, failing after the deadline."""

        async def until() -> None:
            while not predicate():
                await self._changed.wait()

        await asyncio.wait_for(until(), self.deadline)
