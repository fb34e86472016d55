"""BatchHandle: the live view of a submitted batch, usable from sync and async code."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from concurrent.futures import Future
from typing import Any

import attrs

from .. import _loop
from .._logs import get_logger
from .._numbers import wait_limit
from .._retry import is_retryable
from ..errors import (
    AuthenticationError,
    InvalidSourceError,
    OutOfCreditsError,
    PhotoroomError,
    SourceError,
    SourceNotFoundError,
    SourceTooLargeError,
    StorageError,
    UnexpectedError,
    UnsafeKeyError,
    UnsafeURLError,
)
from ..sources import ImageSource, UnlistedSource
from ._callbacks import in_callback_of
from ._jobs import BatchReport, JobResult, JobStatus, Progress

__all__ = ["BatchHandle", "CompletedJobs"]

logger = get_logger("photoroom_bg.batch")


def retry_can_fix(result: JobResult) -> bool:
    """Whether running this job again may end differently: cancelled and spilled jobs,
    transient API failures, running out of credits (they can be topped up), storage
    failures, timeouts fetching a source, a folder that could not be listed, and the
    unexpected. Not a bad key, an image the API refuses, a missing file, a refused URL, or a
    source that is no file or is too large."""
    if result.status in (JobStatus.CANCELLED, JobStatus.SPILLED):
        return True
    if result.status is not JobStatus.FAILED:
        return False
    error = result.error
    if error is None:
        return False
    if isinstance(error, OutOfCreditsError) or is_retryable(error):
        return True
    if isinstance(error, (AuthenticationError, PhotoroomError, UnsafeKeyError)):
        return False
    permanent = (SourceNotFoundError, UnsafeURLError, InvalidSourceError, SourceTooLargeError)
    if isinstance(error, permanent):
        return False
    return isinstance(error, (StorageError, SourceError, UnexpectedError))


def _submitted_again(source: ImageSource) -> ImageSource | str | None:
    """What a retry submits for ``source``: the source without its bytes; for a folder,
    glob or listing that could not be listed, its text, to be listed again (not its error,
    replayed); ``None`` for an item that was never a source (``None``, a closed file)."""
    if isinstance(source, UnlistedSource):
        return source.location if source.kind in ("path", "s3") else None
    return attrs.evolve(source, data=None)


class _Subscriber:
    """One consumer of finished jobs: a queue, and for async consumers their loop's event."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.queue: deque[JobResult] = deque()
        self.loop = loop
        self.event = asyncio.Event() if loop is not None else None

    def wake(self) -> None:
        if self.loop is not None and self.event is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the consumer's loop closed meanwhile
                self.loop.call_soon_threadsafe(self.event.set)


class BatchHandle:
    """A batch in flight: progress, partial results, completion, cancellation.

    Returned at once by :meth:`BatchRemover.submit`. It follows the
    :class:`concurrent.futures.Future` conventions (:meth:`done`, :meth:`result`,
    :meth:`exception`, :meth:`cancel`). From sync code use :attr:`progress`,
    :meth:`results`, :meth:`as_completed` and :meth:`wait`; from async code the same plus
    ``await handle`` and ``async for job in handle``. Ctrl-C while blocked in the sync
    ones, and cancelling a task blocked in the async ones, stop the batch as :meth:`cancel`
    does.

    If the batch itself fails (not one of its jobs: its machinery), :meth:`wait` and
    ``await`` raise that error, :meth:`as_completed` and ``async for`` raise it after the
    jobs that finished, and a handle nobody waits on logs it.

    The batch runs in the process that submitted it. In a child forked while it runs, the
    handle shows what it held at the fork; waiting for the batch and :meth:`cancel` raise
    :class:`RuntimeError` there, as no thread of the child runs it.
    """

    def __init__(self, *, keep_results: bool | int = True) -> None:
        self.keep_results = keep_results
        limit = None if keep_results is True else int(keep_results)
        self._cond = threading.Condition()
        self._kept: deque[JobResult] = deque(maxlen=limit)  # succeeded/skipped/cancelled
        self._failures: deque[JobResult] = deque(maxlen=limit)
        self._finished: list[JobResult] = []  # completion order, when nothing is dropped
        self._unbounded = limit is None
        self._subscribers: list[_Subscriber] = []
        # inputs a retry may fix, without their bytes (in-memory inputs are not kept)
        self._retryable: deque[ImageSource | str] = deque(maxlen=limit)
        self._retryable_total = 0
        self._not_retryable: Counter[str] = Counter()
        self._counts: Counter[JobStatus] = Counter()
        self._running = 0
        self._seen = 0
        self._total: int | None = None
        self._stopped = False
        self._started = time.monotonic()
        self._ended_at: float | None = None
        self._report: BatchReport | None = None
        self._error: BaseException | None = None
        # what code of the caller's raised to stop (sys.exit()...): raised to whoever waits
        self._raised_to_stop: BaseException | None = None
        self._waiters = 0
        self._future: Future[BatchReport] | None = None
        self._cancel: Callable[[str], None] | None = None
        self._retry: Callable[[list[ImageSource | str]], BatchHandle] | None = None
        self._cancel_requested = False
        self._pid = os.getpid()  # a forked child has the handle, but not the batch

    def __repr__(self) -> str:
        p = self.progress
        return (
            f"BatchHandle(total={p.total}, succeeded={p.succeeded}, skipped={p.skipped}, "
            f"spilled={p.spilled}, failed={p.failed}, cancelled={p.cancelled}, "
            f"running={p.running}, done={self.done()})"
        )

    # -- fed by the batch ------------------------------------------------------------------

    def _bind(
        self,
        future: Future[BatchReport],
        cancel: Callable[[str], None],
        retry: Callable[[list[ImageSource | str]], BatchHandle],
    ) -> None:
        self._future = future
        self._cancel = cancel
        self._retry = retry
        future.add_done_callback(self._future_done)

    def _future_done(self, future: Future[BatchReport]) -> None:
        error = None if future.cancelled() else future.exception()
        if error is not None:
            self._fail(error)

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

    def _stopping(self) -> None:
        with self._cond:
            self._stopped = True

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
            if result.status in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.SPILLED):
                again = _submitted_again(source)
                if source.data is not None:
                    self._not_retryable["in-memory input (its bytes are not kept)"] += 1
                elif again is not None and retry_can_fix(result):
                    self._retryable.append(again)
                    self._retryable_total += 1
                else:
                    self._not_retryable[result.error_type or "error"] += 1
            for subscriber in self._subscribers:
                subscriber.queue.append(result)
                subscriber.wake()
            self._cond.notify_all()

    def _status_counts(self) -> Counter[JobStatus]:
        """Finished jobs per status (exact, whatever ``keep_results`` keeps)."""
        with self._cond:
            return Counter(self._counts)

    def _finish(self, report: BatchReport, raised_to_stop: BaseException | None = None) -> None:
        with self._cond:
            self._report = report
            self._raised_to_stop = raised_to_stop
            self._ended_at = time.monotonic()
            self._wake_all()

    def _fail(self, error: BaseException) -> None:
        with self._cond:
            if self._error is not None or self._report is not None:
                return
            if self._waiters == 0:  # said before the handle shows done, so no one misses it
                logger.error("the batch failed: %s", error, exc_info=error)
            self._error = error
            self._ended_at = time.monotonic()
            self._running = 0
            self._wake_all()

    def _wake_all(self) -> None:
        for subscriber in self._subscribers:
            subscriber.wake()
        self._cond.notify_all()

    def _ended(self) -> bool:
        return self._report is not None or self._error is not None

    # -- public ----------------------------------------------------------------------------

    def done(self) -> bool:
        """True once the batch has ended (its report is ready, or it failed), as
        :meth:`concurrent.futures.Future.done`."""
        with self._cond:
            return self._ended()

    def cancelled(self) -> bool:
        """True once the batch has ended after :meth:`cancel` was called."""
        return self._cancel_requested and self.done()

    @property
    def progress(self) -> Progress:
        """A snapshot of the counters, the rate and the ETA."""
        with self._cond:
            counts = dict(self._counts)
            running, seen, total = self._running, self._seen, self._total
            stopped, ended_at = self._stopped or self._ended(), self._ended_at
        elapsed = (ended_at or time.monotonic()) - self._started
        finished = sum(counts.values())
        cancelled = counts.get(JobStatus.CANCELLED, 0)
        processed = finished - cancelled
        rate = processed / elapsed if elapsed > 0 else 0.0
        pending = max(0, seen - finished - running)
        eta = None
        if stopped:
            eta = 0.0
        elif total is not None:
            left = total - finished
            eta = 0.0 if left <= 0 else (left / rate if rate > 0 else None)
        return Progress(
            total=total,
            pending=pending,
            running=running,
            succeeded=counts.get(JobStatus.SUCCEEDED, 0),
            skipped=counts.get(JobStatus.SKIPPED, 0),
            spilled=counts.get(JobStatus.SPILLED, 0),
            failed=counts.get(JobStatus.FAILED, 0),
            cancelled=cancelled,
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

    def _subscribe(self, loop: asyncio.AbstractEventLoop | None) -> _Subscriber:
        subscriber = _Subscriber(loop)
        with self._cond:
            subscriber.queue.extend(self._retained())
            self._subscribers.append(subscriber)
            self._waiters += 1
        return subscriber

    def _unsubscribe(self, subscriber: _Subscriber) -> None:
        with self._cond:
            self._subscribers.remove(subscriber)
            self._waiters -= 1

    def _next(self, subscriber: _Subscriber, timeout: float | None) -> JobResult | None:
        with self._cond:
            ready = self._cond.wait_for(lambda: bool(subscriber.queue) or self._ended(), timeout)
            if not ready:
                raise TimeoutError(_no_job_within(timeout))
            if subscriber.queue:
                return subscriber.queue.popleft()
            self._raise_if_failed()
            return None

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
        if self._raised_to_stop is not None:
            raise self._raised_to_stop

    def as_completed(self, timeout: float | None = None) -> CompletedJobs:
        """The jobs as they finish until the batch ends, for ``for`` and ``async for``
        alike: first those :meth:`results` holds, then every job that finishes after the
        call, none missed however slowly the loop consumes them.

        Args:
            timeout: the longest wait for the next job, in seconds (``None`` or
                ``float("inf")``: no limit); past it, :class:`TimeoutError`.

        Raises:
            PhotoroomBGError: the batch itself failed (after the jobs that finished).
        """
        limit = wait_limit("timeout", timeout)
        return CompletedJobs(self, limit)

    def _iter_completed(self, limit: float | None) -> Iterator[JobResult]:
        self._check_not_on_loop("as_completed()", "async for job in handle.as_completed()")
        self._check_own_process()
        subscriber = self._subscribe(None)
        try:
            while True:
                with self._cancelled_by_interrupt():
                    result = self._next(subscriber, limit)
                if result is None:
                    return
                yield result
        finally:
            self._unsubscribe(subscriber)

    @contextlib.contextmanager
    def _cancelled_by_interrupt(self) -> Iterator[None]:
        """Ctrl-C (or a notebook's interrupt) while blocked on the batch cancels it: no new
        billed request; the calls in flight finish and are stored."""
        try:
            yield
        except KeyboardInterrupt:
            self.cancel("interrupted")  # as the command says it
            raise

    def __aiter__(self) -> AsyncIterator[JobResult]:
        return self._aiter_completed(None)

    async def _aiter_completed(self, limit: float | None) -> AsyncIterator[JobResult]:
        """The async twin of :meth:`_iter_completed`. A task cancelled while it waits here
        (``asyncio.wait_for`` timing out, ``asyncio.run`` ending on Ctrl-C) cancels the batch,
        as a cancelled ``await handle`` does; ``limit`` running out does not."""
        self._check_own_process()
        subscriber = self._subscribe(asyncio.get_running_loop())
        assert subscriber.event is not None
        try:
            while True:
                with self._cond:
                    subscriber.event.clear()
                    result = subscriber.queue.popleft() if subscriber.queue else None
                    ended = self._ended()
                if result is not None:
                    yield result
                    continue
                if ended:
                    with self._cond:
                        self._raise_if_failed()
                    return
                try:  # cancellable: no thread is left behind
                    if limit is None:
                        await subscriber.event.wait()
                    else:
                        await asyncio.wait_for(subscriber.event.wait(), limit)
                except asyncio.TimeoutError:  # the limit, not a cancelled task
                    raise TimeoutError(_no_job_within(limit)) from None
                except asyncio.CancelledError:
                    self.cancel("the task iterating over the batch was cancelled")
                    raise
        finally:
            self._unsubscribe(subscriber)

    def wait(self, timeout: float | None = None) -> BatchReport:
        """Block until the batch ends; return its :class:`BatchReport`. An interrupt
        (Ctrl-C) while blocked here, or in :meth:`as_completed` or :meth:`exception`, cancels
        the batch (see :meth:`cancel`) before it propagates.

        Raises:
            TimeoutError: the batch did not end within ``timeout`` seconds (``None`` or
                ``float("inf")``: no limit).
            PhotoroomBGError: the batch itself failed (not one of its jobs).
            RuntimeError: called on the batch's own event loop, or in a child forked while
                the batch ran.
        """
        self._check_not_on_loop("wait()", "await handle")
        future = self._bound()
        with self._cond:
            self._waiters += 1
        limit = wait_limit("timeout", timeout)
        try:
            with self._cancelled_by_interrupt():
                report = future.result(limit)
        except (TimeoutError, concurrent.futures.TimeoutError):  # two classes before 3.11
            if future.done():
                raise  # the batch's own error
            raise TimeoutError(_still_running(limit)) from None
        else:
            self._raise_if_failed()  # what code of the caller's raised to stop the batch
            return report
        finally:
            with self._cond:
                self._waiters -= 1

    def result(self, timeout: float | None = None) -> BatchReport:
        """The :class:`BatchReport`, waiting for it: :meth:`wait` under the name
        :class:`concurrent.futures.Future` uses."""
        return self.wait(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The error that ended the batch itself (or what code of yours raised to stop it,
        such as ``sys.exit()`` in a callback), or ``None`` when it ran to its end (failed jobs
        are in the report, not here); waits like :meth:`wait`."""
        self._check_not_on_loop("exception()", "await handle")
        future = self._bound()
        with self._cond:
            self._waiters += 1
        limit = wait_limit("timeout", timeout)
        try:
            with self._cancelled_by_interrupt():
                return future.exception(limit) or self._raised_to_stop
        except (TimeoutError, concurrent.futures.TimeoutError):
            raise TimeoutError(_still_running(limit)) from None
        finally:
            with self._cond:
                self._waiters -= 1

    def __await__(self) -> Generator[Any, None, BatchReport]:
        return self._await().__await__()

    async def _await(self) -> BatchReport:
        future = self._bound()
        with self._cond:
            self._waiters += 1
        try:
            # shielded: a cancelled wait must not cancel the batch's own task, which would
            # drop the calls under way (paid for); it stops the batch as cancel() does
            report = await asyncio.shield(asyncio.wrap_future(future))
            self._raise_if_failed()  # what code of the caller's raised to stop the batch
            return report
        except asyncio.CancelledError:
            self.cancel("the task awaiting the batch was cancelled")
            raise
        finally:
            with self._cond:
                self._waiters -= 1

    def _bound(self) -> Future[BatchReport]:
        if self._future is None:
            raise RuntimeError("this handle is not bound to a batch")
        self._check_own_process()
        return self._future

    def _check_own_process(self) -> None:
        """Refuse, in a process forked while the batch ran, what needs the batch itself: no
        thread runs it there, so a wait would block forever and a cancel do nothing."""
        if os.getpid() != self._pid and not self.done():
            raise RuntimeError(
                f"this batch runs in process {self._pid}, not in this forked child: the child "
                "can neither wait for it nor cancel it (submit a batch of its own there)"
            )

    def cancel(self, reason: str = "cancelled") -> bool:
        """Start no new billed request: jobs not started, and jobs waiting for the rate
        budget or to retry, end ``cancelled``; calls already sent finish and are stored.

        Returns ``False`` when the batch had already ended, else ``True``. Raises
        :class:`RuntimeError` in a child forked while the batch ran.
        """
        if self.done():
            return False
        self._check_own_process()
        self._cancel_requested = True
        self._stopping()
        if self._cancel is not None:
            self._cancel(reason)
        return True

    def retry_failed(self) -> BatchHandle:
        """Submit again, as a new batch, the inputs a retry may fix: cancelled and spilled
        jobs, failures that were transient (connection errors, timeouts, 429, 5xx, out of
        credits, storage), and folders or listings that could not be listed (listed
        again). Inputs that cannot succeed as they are (an image the API refuses, a missing
        file, a refused URL, a source that is no regular file or is too large, a bad key)
        and in-memory inputs (the handle keeps no input bytes) are left out, and a warning
        says how many and why.
        """
        if not self.done():
            raise RuntimeError("retry_failed() needs a finished batch: wait for it first")
        if self._retry is None:
            raise RuntimeError("this handle is not bound to a batch")
        with self._cond:
            sources = list(self._retryable)
            dropped = self._retryable_total - len(sources)
            left_out = dict(self._not_retryable)
        if left_out:
            reasons = ", ".join(f"{count} {why}" for why, count in sorted(left_out.items()))
            logger.warning("retry_failed() leaves out inputs a retry cannot fix: %s", reasons)
        if dropped:
            logger.warning(
                "retrying the %d inputs kept (keep_results=%s); %d more could be retried: run "
                "the whole batch again to retry them too (stored outputs are skipped)",
                len(sources),
                self.keep_results,
                dropped,
            )
        return self._retry(sources)

    def _check_not_on_loop(self, name: str, instead: str) -> None:
        if _loop.in_background_loop():  # where submitted batches run
            raise RuntimeError(f"{name} would block the batch's own event loop; use {instead}")
        if in_callback_of(self):  # the batch ends once its callbacks have returned
            raise RuntimeError(f"{name} in a callback of the same batch would wait for itself")


def _no_job_within(limit: float | None) -> str:
    return f"no job finished within {limit:g} s; the batch goes on"


def _still_running(limit: float | None) -> str:
    return f"the batch did not end within {limit:g} s; it goes on (wait again, or cancel() it)"


class CompletedJobs(Iterator[JobResult], AsyncIterator[JobResult]):
    """What :meth:`BatchHandle.as_completed` returns: the jobs as they finish, for ``for``
    in synchronous code and ``async for`` in a coroutine (where blocking would stall the
    event loop). Each iteration starts when it is first asked for a job."""

    def __init__(self, handle: BatchHandle, limit: float | None) -> None:
        self._handle = handle
        self._limit = limit
        self._sync: Iterator[JobResult] | None = None
        self._async: AsyncIterator[JobResult] | None = None

    def __iter__(self) -> CompletedJobs:
        return self

    def __next__(self) -> JobResult:
        if self._sync is None:
            self._sync = self._handle._iter_completed(self._limit)
        return next(self._sync)

    def __aiter__(self) -> CompletedJobs:
        return self

    async def __anext__(self) -> JobResult:
        if self._async is None:
            self._async = self._handle._aiter_completed(self._limit)
        return await self._async.__anext__()

    def close(self) -> None:
        """Stop listening for jobs in a ``for`` loop left early (done anyway when this
        object is collected)."""
        if isinstance(self._sync, Generator):
            self._sync.close()

    async def aclose(self) -> None:
        """The same for an ``async for`` loop left early."""
        if isinstance(self._async, AsyncGenerator):
            await self._async.aclose()
