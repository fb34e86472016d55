"""What paces a batch's billed calls: a requests-per-minute budget, and a concurrency limit
that shrinks when the server says "too many" and grows back as calls succeed."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Awaitable, Callable

import anyio

from .._logs import get_logger

__all__ = ["AdaptiveLimit", "HeldBack", "RateGate"]

logger = get_logger("photoroom_bg.batch")

# cumulative seconds spent waiting for the budget before saying it holds the batch back
_HELD_BACK_NOTICE = 5.0


class HeldBack:
    """The seconds during which a limit held at least one call back (each second counted
    once, however many calls waited in it), and whether to say so now: once, when they first
    reach ``notice``."""

    def __init__(self, notice: float = _HELD_BACK_NOTICE, since: float = -math.inf) -> None:
        self.notice = notice
        self.waited = 0.0
        self._until = since
        self._said = False

    def add(self, start: float, end: float) -> bool:
        """Count a wait from ``start`` to ``end``; ``True`` the one time the total first
        reaches the notice."""
        if end > self._until:
            self.waited += end - max(start, self._until)
            self._until = end
        if self.waited >= self.notice and not self._said:
            self._said = True
            return True
        return False


class RateGate:
    """A token bucket: ``requests_per_minute``, in bursts of up to one second's worth.

    Each call waiting for the budget is given its own turn when it asks (first come, first
    served) and sleeps once, until that turn: a hundred calls waiting cost a hundred sleeps,
    not a wake-up of every waiter each time one of them may go. Waiting is cancellable (a
    stopped batch starts no new request); a cancelled call's turn is not given to another, so
    the budget is never exceeded. Once the budget has held calls back for a few seconds in
    all, it logs once, at INFO, that the client-side budget is what holds the batch back, and
    how to raise it.

    Args:
        requests_per_minute: the budget; ``None`` (or ``inf``) for no limit.
        clock: a monotonic clock in seconds (for tests).
        sleep: an async sleep (for tests).
    """

    def __init__(
        self,
        requests_per_minute: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self.requests_per_minute = requests_per_minute
        # inf: no limit (as a rate it made every wait NaN seconds)
        rpm = requests_per_minute
        self.rate = rpm / 60.0 if rpm is not None and 0 < rpm < math.inf else None
        self.capacity = max(1.0, self.rate) if self.rate else 0.0
        # when the next call would go if no burst were left; a full bucket at first
        self._due = clock()
        self._held = HeldBack(since=self._due)

    @property
    def waited(self) -> float:
        """Seconds during which the budget held at least one call back."""
        return self._held.waited

    def _next_turn(self, rate: float, now: float) -> tuple[float, float]:
        """The next turn's place in the queue, and when it may go (a full bucket lets a
        burst through early)."""
        due = max(self._due, now)
        return due, due - (self.capacity - 1.0) / rate

    def try_acquire(self) -> bool:
        """Take a turn if it is free now; ``False`` (and nothing taken) if it means waiting."""
        if self.rate is None:
            return True
        now = self._clock()
        due, go = self._next_turn(self.rate, now)
        if go > now:
            return False
        self._due = due + 1.0 / self.rate
        return True

    async def acquire(self) -> None:
        """Wait for this call's turn (at once when there is no budget)."""
        if self.rate is None:
            return
        now = self._clock()
        due, go = self._next_turn(self.rate, now)
        self._due = due + 1.0 / self.rate  # taken now: later callers queue behind it
        if go <= now:
            return
        if self._held.add(now, go):
            logger.info(
                "requests_per_minute=%g is what holds this batch back (%.1f images/s at "
                "most); if your Photoroom account allows more, raise it "
                "(BatchRemover(requests_per_minute=...), photoroom-bg --rpm, the service's "
                "PHOTOROOM_BG_PHOTOROOM_REQUESTS_PER_MINUTE)",
                self.requests_per_minute,
                self.rate,
            )
        await self._sleep(go - now)


class AdaptiveLimit:
    """How many billed calls may be in flight: ``maximum`` at first, halved (at most once per
    ``window`` seconds, never below one) when the server answers 429, and grown back by about
    one call per ``limit`` successes. Sporadic 429s cost little; a real server limit settles
    the batch just under it instead of a storm of 429s.

    Calls waiting for a slot queue first come, first served; a freed slot wakes the one
    call it goes to, not every waiter.

    Args:
        maximum: the batch's concurrency.
        window: seconds during which further 429s (from calls already in flight when the
            first one came) do not shrink the limit again.
        clock: a monotonic clock (for tests).
    """

    def __init__(
        self,
        maximum: int,
        *,
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.window = window
        self.in_use = 0
        self.throttles = 0
        self._clock = clock
        self._last_cut = -window
        self._waiting: collections.deque[anyio.Event] = collections.deque()

    def try_acquire(self) -> bool:
        """Take a slot if one is free now and nobody queues for one."""
        if not self._waiting and self.in_use < int(self.limit):
            self.in_use += 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a free slot (cancellable)."""
        if self.try_acquire():
            return
        granted = anyio.Event()
        self._waiting.append(granted)
        try:
            await granted.wait()
        except BaseException:
            if granted.is_set():  # the slot came with the cancellation: pass it on
                self.release()
            else:
                self._waiting.remove(granted)
            raise

    def release(self) -> None:
        """Give a slot back."""
        self.in_use -= 1
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.in_use < int(self.limit):
            self.in_use += 1
            self._waiting.popleft().set()

    def throttled(self) -> None:
        """The server said "too many requests"."""
        self.throttles += 1
        now = self._clock()
        if now - self._last_cut >= self.window:
            self._last_cut = now
            self.limit = max(1.0, self.limit / 2)

    def succeeded(self) -> None:
        """A call went through: grow back towards ``maximum``."""
        if self.limit < self.maximum:
            self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)
            self._grant()
