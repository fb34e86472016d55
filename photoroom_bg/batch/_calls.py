"""How a batch calls its engine: paced, retried with the batch's policy, stoppable between
attempts, and watching for an API that cannot be reached at all."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from .._logs import get_logger
from .._retry import RetryPolicy, is_retryable
from ..engines._base import Engine
from ..errors import APIConnectionError, APIStatusError, PhotoroomBGError, RateLimitError
from ..models import ImageResult
from ._limiter import AdaptiveLimit, RateGate

__all__ = ["EngineCalls", "EngineFailed", "Stopped"]

logger = get_logger("photoroom_bg.batch")

T = TypeVar("T")

#: The longest wait between two attempts to reach an engine that stopped taking connections.
OUTAGE_MAX_DELAY = 5.0


class Stopped(Exception):
    """The batch stopped while this job waited (for the budget, a retry, a duplicate...)."""

    def __init__(self, reason: str, attempts: int = 0, possibly: int = 0) -> None:
        super().__init__(reason)
        self.attempts = attempts
        self.possibly = possibly


class EngineFailed(Exception):
    """A failure a retry cannot fix, or the retries ran out."""

    def __init__(self, error: PhotoroomBGError, attempts: int, possibly: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts
        self.possibly = possibly


Stoppable = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


class EngineCalls:
    """Calls the engine for one batch.

    Billed calls wait for the requests-per-minute budget and for a slot of an
    :class:`AdaptiveLimit` (fewer calls at once after a 429, more again as they succeed);
    failures a retry may fix wait their ``Retry-After`` (capped) or the policy's backoff, in
    the job that met them. If every call so far failed to connect (no answer at all), the
    batch stops after its first wave rather than spending every image's retries. Once the
    engine has answered, failed connections (nothing sent, nothing billed) are an outage:
    for ``outage_budget`` seconds from the first of them since the last answer, jobs keep
    trying (with the policy's backoff, at most :data:`OUTAGE_MAX_DELAY` apart) without
    spending their retries; then the batch stops.

    Args:
        engine: the engine.
        options: the batch's options.
        policy: the batch's retry policy; ``max_retries``: per job.
        outage_budget: seconds failed connections to an engine that has answered are
            tried again without counting as retries.
        requests_per_minute: the budget (applied only to engines that bill).
        concurrency: the batch's concurrency, the limit's maximum and the first wave's size.
        stoppable: runs a wait that ends with :class:`Stopped` when the batch stops.
        stop: stops the batch, with a reason.
        stopped: whether the batch has stopped.
    """

    def __init__(
        self,
        engine: Engine,
        options: Any,
        policy: RetryPolicy,
        *,
        max_retries: int,
        outage_budget: float = 0.0,
        requests_per_minute: float | None,
        concurrency: int,
        stoppable: Stoppable,
        stop: Callable[[str], None],
        stopped: Callable[[], bool],
    ) -> None:
        self.engine = engine
        self.options = options
        self.policy = policy
        self.max_retries = max_retries
        self.outage_budget = outage_budget
        self._outage_since: float | None = None  # the first failed connection since an answer
        self.gate = RateGate(requests_per_minute if engine.bills else None)
        self.limit = AdaptiveLimit(concurrency)
        self.concurrency = concurrency
        self.total: int | None = None  # inputs, once listed: a small batch's first wave
        #: set when paid calls may begin (the account balance before them has been read)
        self.ready: anyio.Event | None = None
        self._stoppable = stoppable
        self._stop = stop
        self._stopped = stopped
        self._answered = False
        #: calls to the engine under way (sent, or being sent, and not answered yet)
        self.sending = 0
        self._unreachable: set[int] = set()

    async def call(self, job: int, data: bytes, url: str | None) -> tuple[ImageResult, int, int]:
        """Make one cut-out (of ``url`` when Photoroom fetches it itself); return it with
        the attempts made and how many failed in a way the server may have billed.

        Raises:
            EngineFailed: a failure a retry cannot fix, or the retries ran out.
            Stopped: the batch stopped before the next attempt was sent.
        """
        delays = self.policy.delays()
        attempt = possibly = retries = 0
        while True:
            try:
                if not self._turn_now():
                    await self._stoppable(self._take_turn)
            except Stopped as stopped:
                raise Stopped(str(stopped), attempt, possibly) from None
            attempt += 1
            self.sending += 1
            try:
                try:
                    if url is not None:
                        result = await self.engine.process_url(url, self.options)  # type: ignore[attr-defined]
                    else:
                        result = await self.engine.process(data, self.options)
                finally:
                    self.sending -= 1
            except PhotoroomBGError as exc:
                self.limit.release()
                if getattr(exc, "possibly_billed", False):
                    possibly += 1
                wait = self._after_failure(exc, next(delays), job)
                if self._in_outage(exc):
                    wait = min(wait, OUTAGE_MAX_DELAY)
                else:
                    retries += 1
                if not is_retryable(exc, self.policy) or retries > self.max_retries:
                    raise EngineFailed(exc, attempt, possibly) from None
                logger.debug("retrying job %d after %s (attempt %d)", job, exc, attempt)
                try:
                    await self._stoppable(functools.partial(anyio.sleep, wait))
                except Stopped as stopped:
                    raise Stopped(str(stopped), attempt, possibly) from None
                continue
            except BaseException:
                self.limit.release()
                raise
            self.limit.release()
            self.limit.succeeded()
            self._answered = True
            if self._outage_since is not None:
                logger.info("the engine answers again")
                self._outage_since = None
            return result, attempt, possibly

    def _in_outage(self, exc: PhotoroomBGError) -> bool:
        """Whether ``exc`` is a failed connection to an engine that answered before, within
        the outage budget (then it does not count as one of the job's retries)."""
        if not (
            self._answered
            and isinstance(exc, APIConnectionError)
            and not exc.possibly_billed
            and not self._stopped()
        ):
            return False
        now = anyio.current_time()
        if self._outage_since is None:
            self._outage_since = now
            logger.warning(
                "the engine stopped taking connections (%s); jobs keep trying for up to %g s",
                exc,
                self.outage_budget,
            )
        if now - self._outage_since < self.outage_budget:
            return True
        self._stop(
            f"the engine has taken no connection for {self.outage_budget:g} s "
            f"(engine_outage_budget): {exc}"
        )
        return False

    def _turn_now(self) -> bool:
        """Take a turn if one is free at once (no wait, so nothing a stop must interrupt)."""
        if self._stopped() or (self.ready is not None and not self.ready.is_set()):
            return False
        if not self.limit.try_acquire():
            return False
        if not self.gate.try_acquire():
            self.limit.release()
            return False
        return True

    async def _take_turn(self) -> None:
        if self.ready is not None and not self.ready.is_set():
            await self.ready.wait()
        await self.limit.acquire()
        try:
            await self.gate.acquire()
        except BaseException:
            self.limit.release()
            raise

    def _after_failure(self, exc: PhotoroomBGError, backoff: float, job: int) -> float:
        """Account for a failed call; return how long its job waits before retrying."""
        if isinstance(exc, APIStatusError):
            self._answered = True
        if isinstance(exc, RateLimitError):
            self.limit.throttled()
        if isinstance(exc, APIConnectionError) and not exc.possibly_billed and not self._answered:
            self._unreachable.add(job)
            wave = min(self.concurrency, self.total if self.total is not None else self.concurrency)
            if len(self._unreachable) >= max(1, wave):
                self._stop(f"the Photoroom API cannot be reached ({exc})")
        if isinstance(exc, APIStatusError):
            return self.policy.delay_for(exc, backoff)  # Retry-After, capped
        return backoff
