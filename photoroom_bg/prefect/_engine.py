"""One rate limit for a fleet: an engine that takes a Prefect rate-limit slot per billed call."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .._logs import get_logger
from ..batch._limiter import HeldBack
from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..engines import Engine
    from ..models import ImageResult
    from ..options import EditOptions, SegmentOptions

__all__ = ["RateLimitedEngine", "ensure_rate_limit", "prefect_rate_limit"]

Acquire = Callable[[str], Awaitable[None]]

logger = get_logger("photoroom_bg.prefect")

#: A slot that takes longer than this to come waited for the limit (less: a round trip to
#: the Prefect API).
_SLOT_ROUND_TRIP = 0.25


async def prefect_rate_limit(name: str, *, timeout: float | None = None) -> None:
    """Take one slot of the Prefect global concurrency limit ``name`` (it must have a slot
    decay): the call returns when the fleet-wide budget allows one more request.

    Raises:
        ConfigurationError: the limit does not exist, has no slot decay, or could not be
            reached within ``timeout`` seconds.
    """
    from prefect.concurrency.asyncio import rate_limit
    from prefect.exceptions import PrefectException

    try:
        await rate_limit(name, occupy=1, timeout_seconds=timeout, strict=True)
    except (PrefectException, TimeoutError) as exc:
        raise ConfigurationError(
            f"could not take a slot of the rate limit {name!r}: {exc}"
        ) from None


class RateLimitedEngine:
    """Wraps an :class:`~photoroom_bg.Engine` so that each call that bills first takes a slot
    of a Prefect global rate limit, shared by every worker of the fleet.

    Give the wrapped engine to :class:`~photoroom_bg.BatchRemover` with
    ``requests_per_minute=None``: the fleet-wide limit replaces the per-batch one. Every
    attempt takes a slot (a retried call is a request too); engines that do not bill
    (``LocalEngine``) pass straight through.

    Args:
        engine: the engine to wrap (name, billing and results are its own).
        limit: name of a global concurrency limit with a slot decay (see
            :func:`~photoroom_bg.prefect.ensure_rate_limit`).
        timeout: seconds to wait for a slot before giving up with
            :class:`~photoroom_bg.errors.ConfigurationError` (``None``: wait).
        acquire: ``async (name) -> None`` taking a slot (default: Prefect's ``rate_limit``;
            tests pass their own).
        clock: a monotonic clock (for tests).

    Once its calls have waited a few seconds for slots, it logs (once, at INFO) that the
    fleet's limit is what holds it back, and how to raise it.

    The wrapper is used on one event loop (the batch's); :meth:`aclose` closes the wrapped
    engine on that loop, wherever it is called from.
    """

    def __init__(
        self,
        engine: Engine,
        limit: str,
        *,
        timeout: float | None = None,
        acquire: Acquire | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.limit = limit
        self.timeout = timeout
        self.name = engine.name
        self.bills = engine.bills
        self._acquire = acquire
        self._loop: asyncio.AbstractEventLoop | None = None
        self.slots_taken = 0
        self._clock = clock
        self._held = HeldBack()  # seconds some call waited for a slot

    def __repr__(self) -> str:
        return f"RateLimitedEngine({self.engine!r}, limit={self.limit!r})"

    async def _slot(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self.bills:
            return
        asked = self._clock()
        if self._acquire is not None:
            await self._acquire(self.limit)
        else:
            await prefect_rate_limit(self.limit, timeout=self.timeout)
        self.slots_taken += 1
        came = self._clock()
        if came - asked > _SLOT_ROUND_TRIP and self._held.add(asked, came):
            logger.info(
                "the fleet's rate limit %r is what holds this shard back (its calls waited "
                "%.0f s for a slot); if your Photoroom account allows more, raise the job's "
                "requests_per_minute (remove_backgrounds(requests_per_minute=...), the "
                "service's PHOTOROOM_BG_PHOTOROOM_REQUESTS_PER_MINUTE) or the limit itself",
                self.limit,
                self._held.waited,
            )

    async def process(self, image: bytes, options: SegmentOptions | EditOptions) -> ImageResult:
        """Take a slot, then let the wrapped engine process ``image``."""
        await self._slot()
        return await self.engine.process(image, options)

    async def process_url(self, url: str, options: EditOptions) -> ImageResult:
        """Take a slot, then let the wrapped engine fetch and process ``url`` (engines with
        ``process_url`` only, such as :class:`~photoroom_bg.PhotoroomEngine`)."""
        method: Any = getattr(self.engine, "process_url", None)
        if method is None:
            raise ConfigurationError(f"{self.engine!r} cannot process URLs")
        await self._slot()
        result: ImageResult = await method(url, options)
        return result

    async def aclose(self) -> None:
        """Close the wrapped engine on the loop that used it."""
        loop = self._loop
        if loop is None or loop is asyncio.get_running_loop() or not loop.is_running():
            await self.engine.aclose()
            return
        done = asyncio.run_coroutine_threadsafe(_close(self.engine), loop)
        await asyncio.wrap_future(done)


async def _close(engine: Engine) -> None:
    await engine.aclose()


async def ensure_rate_limit(name: str, requests_per_minute: float) -> None:
    """Create (or update) the Prefect global concurrency limit ``name`` so that the fleet
    together makes at most ``requests_per_minute`` billed calls, in bursts of at most one
    second's worth.

    The limit's slots decay at ``requests_per_minute / 60`` per second; each billed call of a
    :class:`RateLimitedEngine` occupies one. Equivalent CLI:
    ``prefect gcl create NAME --limit <burst> --slot-decay-per-second <rpm/60>``.

    Raises:
        ConfigurationError: ``requests_per_minute`` is not positive.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectAlreadyExists

    if not requests_per_minute or not requests_per_minute > 0:  # NaN too
        raise ConfigurationError("requests_per_minute must be positive")
    decay = requests_per_minute / 60.0
    burst = max(1, math.ceil(decay))
    async with get_client() as client:
        try:
            await client.upsert_global_concurrency_limit_by_name(
                name, burst, slot_decay_per_second=decay
            )
        except ObjectAlreadyExists:  # another flow created it between our read and create
            await client.upsert_global_concurrency_limit_by_name(
                name, burst, slot_decay_per_second=decay
            )
