"""The shared request gate: a requests-per-minute budget and a pause all workers honour."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["RateGate"]


class RateGate:
    """A token bucket (``requests_per_minute``, bursts of up to one second's worth) plus a
    shared pause: when one job is told to slow down (429 ``Retry-After``), every job waits.

    Args:
        requests_per_minute: the budget; ``None`` for no limit.
        clock: a monotonic clock in seconds (for tests).
        sleep: an async sleep (for tests).
    """

    def __init__(
        self,
        requests_per_minute: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self.rate = requests_per_minute / 60.0 if requests_per_minute else None
        self.capacity = max(1.0, self.rate) if self.rate else 0.0
        self._tokens = self.capacity
        self._updated = clock()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()
        self.pauses = 0

    def pause(self, seconds: float) -> None:
        """Hold every worker for ``seconds`` from now (extends, never shortens, a pause)."""
        until = self._clock() + max(0.0, seconds)
        if until > self._paused_until:
            self._paused_until = until
            self.pauses += 1

    async def acquire(self) -> None:
        """Wait for the pause to end and for a token."""
        while True:
            wait = self._paused_until - self._clock()
            if wait > 0:
                await self._sleep(wait)
                continue
            if self.rate is None:
                return
            async with self._lock:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                shortfall = (1 - self._tokens) / self.rate
            await self._sleep(shortfall)
