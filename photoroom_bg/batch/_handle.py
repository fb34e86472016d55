"""BatchHandle: the live view of a submitted batch, usable from sync and async code."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .. import _loop
from ._jobs import BatchReport, JobResult, JobStatus, Progress

if TYPE_CHECKING:
    from ..sources import ImageSource

__all__ = ["BatchHandle"]

logger = logging.getLogger("photoroom_bg.batch")


class BatchHandle:
    """A batch in flight: progress, partial results, completion, cancellation.

    Returned at once by :meth:`BatchRemover.submit`. From sync code use :attr:`progress`,
    :meth:`results`, :meth:`as_completed` and :meth:`wait`; from async code the same plus
    ``await handle`` and ``async for job in handle``.
    """

    def __init__(self, *, keep_results: bool | int = True) -> None:
        self.keep_results = keep_results
        limit = None if keep_results is True else int(keep_results)
        self._cond = threading.Condition()
        self._kept: deque[JobResult] = deque(maxlen=limit)  # succeeded/skipped/cancelled
        self._failures: deque[JobResult] = deque(maxlen=limit)
        self._finished: list[JobResult] = []  # completion order, when nothing is dropped
        self._unbounded = limit is None
        self._subscribers: list[deque[JobResult]] = []
        self._failed_sources: deque[ImageSource] = deque(maxlen=limit)
        self._failed_total = 0
        self._counts: Counter[JobStatus] = Counter()
        self._running = 0
        self._seen = 0
        self._total: int | None = None
        self._started = time.monotonic()
        self._report: BatchReport | None = None
        self._future: Future[BatchReport] | None = None
        self._cancel: Callable[[str], None] | None = None
        self._retry: Callable[[list[ImageSource]], BatchHandle] | None = None
        self._cancel_requested = False

    def __repr__(self) -> str:
        p = self.progress
        return (
            f"BatchHandle(total={p.total}, succeeded={p.succeeded}, skipped={p.skipped}, "
            f"failed={p.failed}, cancelled={p.cancelled}, running={p.running}, done={self.done()})"
        )

    # -- fed by the batch ------------------------------------------------------------------

    def _bind(
        self,
        future: Future[BatchReport],
        cancel: Callable[[str], None],
        retry: Callable[[list[ImageSource]], BatchHandle],
    ) -> None:
        self._future = future
        self._cancel = cancel
        self._retry = retry

    def _source_seen(self) -> None:
        with self._cond:
            self._seen += 1

    def _sources_done(self) -> None:
        with self._cond:
            self._total = self._seen
            self._cond.notify_all()

    def _job_started(self) -> None:
        with self._cond:
            self._running += 1

    def _job_finished(self, result: JobResult, source: ImageSource, was_running: bool) -> None:
        with self._cond:
            if was_running:
                self._running -= 1
            self._counts[result.status] += 1
            if self._unbounded:
                self._finished.append(result)
            elif result.status is JobStatus.FAILED:
                self._failures.append(result)
            else:
                self._kept.append(result)
            if result.status is JobStatus.FAILED:
                self._failed_sources.append(source)
                self._failed_total += 1
            for queue in self._subscribers:
                queue.append(result)
            self._cond.notify_all()

    def _status_counts(self) -> Counter[JobStatus]:
        """Finished jobs per status (exact, whatever ``keep_results`` keeps)."""
        with self._cond:
            return Counter(self._counts)

    def _finish(self, report: BatchReport) -> None:
        with self._cond:
            self._report = report
            self._cond.notify_all()

    # -- public ----------------------------------------------------------------------------

    def done(self) -> bool:
        """True once the batch has ended (its report is ready, or it failed), as
        :meth:`concurrent.futures.Future.done`."""
        return self._report is not None or (self._future is not None and self._future.done())

    def cancelled(self) -> bool:
        """True once the batch has ended after :meth:`cancel` was called."""
        return self._cancel_requested and self.done()

    @property
    def progress(self) -> Progress:
        """A snapshot of the counters, the rate and the ETA."""
        with self._cond:
            counts = dict(self._counts)
            running, seen, total = self._running, self._seen, self._total
        elapsed = time.monotonic() - self._started
        finished = sum(counts.values())
        rate = finished / elapsed if elapsed > 0 else 0.0
        pending = max(0, seen - finished - running)
        eta = None
        if total is not None:
            left = total - finished
            eta = 0.0 if left <= 0 else (left / rate if rate > 0 else None)
        return Progress(
            total=total,
            pending=pending,
            running=running,
            succeeded=counts.get(JobStatus.SUCCEEDED, 0),
            skipped=counts.get(JobStatus.SKIPPED, 0),
            failed=counts.get(JobStatus.FAILED, 0),
            cancelled=counts.get(JobStatus.CANCELLED, 0),
            elapsed=elapsed,
            rate=rate,
            eta=eta,
        )

    def results(self) -> list[JobResult]:
        """The jobs finished so far (the partial results).

        With ``keep_results=True`` every job, in completion order. With a number ``n``
        (:class:`BatchRemover`'s default is 1,000): the latest ``n`` failed jobs, then the
        latest ``n`` others (``False``: none), so that a batch of millions keeps a bounded
        amount of memory; the report's counts, the manifest and the sink hold the rest.
        """
        with self._cond:
            return self._retained()

    def _retained(self) -> list[JobResult]:
        if self._unbounded:
            return list(self._finished)
        return [*self._failures, *self._kept]

    def _subscribe(self) -> deque[JobResult]:
        with self._cond:
            queue = deque(self._retained())
            self._subscribers.append(queue)
            return queue

    def _unsubscribe(self, queue: deque[JobResult]) -> None:
        with self._cond:
            self._subscribers.remove(queue)

    def _next(self, queue: deque[JobResult], timeout: float | None) -> JobResult | None:
        with self._cond:
            ready = self._cond.wait_for(lambda: bool(queue) or self._report is not None, timeout)
            if not ready:
                raise TimeoutError("no job finished in time")
            return queue.popleft() if queue else None

    def as_completed(self, timeout: float | None = None) -> Iterator[JobResult]:
        """Yield jobs as they finish until the batch ends: first those :meth:`results`
        holds, then every job that finishes after the call, none missed however slowly
        the loop consumes them.

        Args:
            timeout: the longest wait for the next job, in seconds.
        """
        self._check_not_on_loop("as_completed()", "async for job in handle")
        queue = self._subscribe()
        try:
            while (result := self._next(queue, timeout)) is not None:
                yield result
        finally:
            self._unsubscribe(queue)

    async def __aiter__(self) -> AsyncIterator[JobResult]:
        queue = self._subscribe()
        try:
            while True:
                with self._cond:
                    result = queue.popleft() if queue else None
                    ended = self._report is not None
                if result is None:
                    if ended:
                        return
                    result = await asyncio.to_thread(self._next, queue, None)
                    if result is None:
                        return
                yield result
        finally:
            self._unsubscribe(queue)

    def wait(self, timeout: float | None = None) -> BatchReport:
        """Block until the batch ends; return its :class:`BatchReport`.

        Raises:
            TimeoutError: the batch did not end within ``timeout`` seconds.
            PhotoroomBGError: the batch itself failed (not one of its jobs).
        """
        self._check_not_on_loop("wait()", "await handle")
        if self._future is None:
            raise RuntimeError("this handle is not bound to a batch")
        return self._future.result(timeout)

    def result(self, timeout: float | None = None) -> BatchReport:
        """The :class:`BatchReport`, waiting for it: :meth:`wait` under the name
        :class:`concurrent.futures.Future` uses."""
        return self.wait(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The error that ended the batch itself, or ``None`` when it ran to its end (failed
        jobs are in the report, not here); waits like :meth:`wait`."""
        self._check_not_on_loop("exception()", "await handle")
        if self._future is None:
            raise RuntimeError("this handle is not bound to a batch")
        return self._future.exception(timeout)

    def __await__(self) -> Generator[Any, None, BatchReport]:
        if self._future is None:
            raise RuntimeError("this handle is not bound to a batch")
        return asyncio.wrap_future(self._future).__await__()

    def cancel(self, reason: str = "cancelled") -> bool:
        """Stop starting jobs: pending ones end ``cancelled``; running ones finish.

        Returns ``False`` when the batch had already ended, else ``True``.
        """
        if self.done():
            return False
        self._cancel_requested = True
        if self._cancel is not None:
            self._cancel(reason)
        return True

    def retry_failed(self) -> BatchHandle:
        """Submit the inputs of the failed jobs again, as a new batch."""
        if not self.done():
            raise RuntimeError("retry_failed() needs a finished batch: wait for it first")
        if self._retry is None:
            raise RuntimeError("this handle is not bound to a batch")
        with self._cond:
            sources = list(self._failed_sources)
            dropped = self._failed_total - len(sources)
        if dropped:
            logger.warning(
                "retrying the %d failed inputs kept (keep_results=%s); %d more failed: run the "
                "whole batch again to retry them too (stored outputs are skipped)",
                len(sources),
                self.keep_results,
                dropped,
            )
        return self._retry(sources)

    def _check_not_on_loop(self, name: str, instead: str) -> None:
        if _loop.in_background_loop():  # where submitted batches run
            raise RuntimeError(f"{name} would block the batch's own event loop; use {instead}")
