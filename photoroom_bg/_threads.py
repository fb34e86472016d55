"""Blocking calls run off the event loop, at a fraction of ``asyncio.to_thread``'s cost.

``asyncio.to_thread`` wakes a worker thread for every call and the event loop for every
result (a ``concurrent.futures`` future, a lock, a pipe write each way): 60 to 140 µs of CPU
per call on a small VM, three times per image in a batch that reads files and stores files.
Here each event loop has a small set of worker threads sharing one queue of calls:

- a call is queued; a sleeping worker is woken only when no worker is awake to take it, so a
  worker that is already running takes the calls queued meanwhile without another wake-up;
- when the oldest queued call has waited over :data:`WAIT_SECONDS` (the awake workers are
  blocked, say in an ``fsync`` on a slow disk), one more worker is woken, up to
  :data:`MAX_THREADS`: a timer on the loop looks while calls are queued, so slow calls never
  hold the others up for long;
- finished calls are handed back in batches: one wake-up of the event loop delivers every
  result finished since the last one.

Semantics are ``asyncio.to_thread``'s: the caller's context variables are visible in the
call, its exception is raised to the awaiting task, and cancelling that task stops the wait:
a call not yet begun is then dropped, one under way runs to its end. Idle workers end after
:data:`IDLE_SECONDS`; at interpreter exit the calls under way, and those queued that are still
awaited, are finished before Python goes down (a write half done would otherwise be cut short).

Cheaper still is no hand-over: :class:`QuickCalls` runs small file work (a look-up, a small
read or write) on the event loop itself while it stays quick, and sends it here for a while
after a call that was not.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from ._logs import get_logger

__all__ = [
    "IDLE_SECONDS",
    "QUICK_BYTES",
    "QUICK_SECONDS",
    "QuickCalls",
    "carried",
    "run_sync",
    "thread_count",
]

T = TypeVar("T")

#: A worker with nothing to do for this long ends (a new one starts when work comes).
IDLE_SECONDS = 10.0
#: A call queued this long (longer than a thread waits for the GIL) wakes one more worker.
WAIT_SECONDS = 0.005
#: Workers per event loop at most, as ``asyncio``'s default executor sizes its pool.
MAX_THREADS = min(32, (os.cpu_count() or 1) + 4)
#: A call of a :class:`QuickCalls` that took longer than this on the event loop sends the
#: calls after it to worker threads.
QUICK_SECONDS = 0.01
#: How long such calls then go to worker threads (doubled while probes stay slow, up to
#: :data:`MAX_HOLD_SECONDS`).
HOLD_SECONDS = 1.0
MAX_HOLD_SECONDS = 60.0
#: Files larger than this are read or written in worker threads, never in place.
QUICK_BYTES = 1 << 20

logger = get_logger("photoroom_bg")

_Call = tuple[
    float, contextvars.Context, Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"
]
_Result = tuple["asyncio.Future[Any]", Any, BaseException | None]


class _Workers:
    """The worker threads of one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_threads: int) -> None:
        # weakly: the table of workers is keyed by the loop, which must be free to go
        self.loop = weakref.ref(loop)
        self.max_threads = max_threads
        self.calls: collections.deque[_Call] = collections.deque()
        self.results: collections.deque[_Result] = collections.deque()
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.threads: set[threading.Thread] = set()
        self.idle = 0  # workers waiting for a call
        self.signals = 0  # wake-ups sent that no worker has taken yet
        self.delivery_due = False  # a delivery is scheduled on the loop and has not begun
        self.check_due = False  # a look at the queue is scheduled on the loop
        self.exiting = False

    def submit(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
        """Queue ``fn(*args)``; called on ``loop``, this set's own loop."""
        future = loop.create_future()
        now = time.monotonic()
        with self.lock:
            self.calls.append((now, contextvars.copy_context(), fn, args, future))
            if len(self.threads) - self.idle + self.signals == 0 or self._stuck(now):
                self._more()
        if not self.check_due:  # if the awake workers block, look again soon
            self.check_due = True
            loop.call_later(WAIT_SECONDS, self._check)
        return future

    def _check(self) -> None:
        """On the loop, while calls are queued: wake one more worker if they are stuck."""
        with self.lock:
            if self._stuck(time.monotonic()):
                self._more()
            again = bool(self.calls)
        if again:
            asyncio.get_running_loop().call_later(WAIT_SECONDS, self._check)
        else:
            self.check_due = False

    def _stuck(self, now: float) -> bool:
        """True when the oldest queued call has waited too long (lock held)."""
        return bool(self.calls) and now - self.calls[0][0] > WAIT_SECONDS

    def _more(self) -> None:
        """Wake a sleeping worker, or start one (lock held)."""
        if self.idle > self.signals:
            self.signals += 1
            self.wake.notify()
        elif len(self.threads) < self.max_threads:
            thread = threading.Thread(target=self._work, name="photoroom_bg-worker", daemon=True)
            self.threads.add(thread)
            _live.add(self)
            thread.start()

    def _next(self) -> _Call | None:
        """The next call to run, or None when this worker should end (lock held)."""
        while not self.calls:
            if self.exiting:
                return None
            self.idle += 1
            notified = self.wake.wait(IDLE_SECONDS)
            self.idle -= 1
            if self.signals:
                self.signals -= 1  # whoever it was meant for, one wake-up is used
            elif not notified and not self.calls:
                return None  # idle too long
        call = self.calls.popleft()
        if self._stuck(time.monotonic()):
            self._more()  # the others are busy (a slow disk?): share the queue out
        return call

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self.lock:
                call = self._next()
                if call is None:
                    self.threads.discard(me)
                    if not self.threads:
                        _live.discard(self)
                    return
            _, context, fn, args, future = call
            del call
            if future.cancelled():  # nobody waits for it any more, and it has not begun
                del future, fn, args, context
                continue
            try:
                result: _Result = (future, context.run(fn, *args), None)
            except BaseException as exc:
                result = (future, None, carried(exc, fn))
            self.results.append(result)
            del result, future, fn, args, context
            with self.lock:
                if self.delivery_due:
                    continue
                self.delivery_due = True
            loop = self.loop()
            try:
                if loop is None:
                    raise RuntimeError("the event loop is gone")
                loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                self.results.clear()
            del loop

    def _deliver(self) -> None:
        with self.lock:
            self.delivery_due = False
        results = self.results
        while results:
            future, value, error = results.popleft()
            if future.done():  # the awaiting task was cancelled
                continue
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)

    def finish(self) -> None:
        """Let the workers end once no call is left, and wait for them (at exit)."""
        with self.lock:
            self.exiting = True
            self.wake.notify_all()
            threads = list(self.threads)
        for thread in threads:
            thread.join()


# Raised in a worker thread, these mean something else once raised in the awaiting
# coroutine: a StopIteration cannot be set on a future at all (its result was never handed
# back, and the caller waited forever), a GeneratorExit breaks the coroutine it reaches, and a
# CancelledError passes for a cancel of the awaiting task, which nothing asked for.
_MISLEADING = (StopIteration, StopAsyncIteration, GeneratorExit, asyncio.CancelledError)


def carried(exc: BaseException, fn: object, *, where: str = " in a worker thread") -> BaseException:
    """What ``fn``, a plain function run in a worker thread (or ``where`` else), raised, as
    it may be raised in a coroutine: one of :data:`_MISLEADING` becomes a
    :class:`RuntimeError` with it as its cause, as PEP 479 does for a generator's
    ``StopIteration``."""
    if not isinstance(exc, _MISLEADING):
        return exc
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    error = RuntimeError(f"{name} raised {type(exc).__name__}{where}")
    error.__cause__ = exc
    return error


_workers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Workers] = (
    weakref.WeakKeyDictionary()
)
_workers_lock = threading.Lock()
# every set of workers with a thread alive, its loop gone or not: finished at exit
_live: set[_Workers] = set()


def _for(loop: asyncio.AbstractEventLoop) -> _Workers:
    workers = _workers.get(loop)
    if workers is None:
        with _workers_lock:
            workers = _workers.get(loop)
            if workers is None:
                workers = _workers[loop] = _Workers(loop, MAX_THREADS)
    return workers


async def run_sync(fn: Callable[..., T], *args: Any) -> T:
    """``await run_sync(fn, *args)``: ``fn(*args)`` in a worker thread of the running loop."""
    loop = asyncio.get_running_loop()
    result: T = await _for(loop).submit(loop, fn, args)
    return result


class QuickCalls:
    """Blocking file calls of one kind, run on the event loop while they are quick.

    A ``stat``, a small read or a small write on a local disk takes a few microseconds; handing
    it to a worker thread costs far more: the wake-ups, and a hand-over of the GIL between the
    worker and the busy event loop at every system call the worker makes (measured: 0.3 ms of
    CPU per image for a batch that reads, looks up and stores files). So the calls run in
    place, and when one takes longer than ``quick_seconds`` (a network file system, a disk busy
    writing back, a hiccup of the machine), the calls after it go to :func:`run_sync` for
    :data:`HOLD_SECONDS`; the next call then runs in place again, as a probe. A probe that is
    slow too doubles the hold, up to :data:`MAX_HOLD_SECONDS`: on storage that stays slow, the
    loop is held up once a minute at most. A call that must never hold the loop up (a file
    over :data:`QUICK_BYTES`) is given to :func:`run_sync` by its caller.
    """

    def __init__(self, what: str, quick_seconds: float = QUICK_SECONDS) -> None:
        self.what = what
        self.quick_seconds = quick_seconds
        self.clock = time.perf_counter
        self.until = 0.0  # calls go to worker threads until the clock reads this
        self._hold = 0.0

    def __repr__(self) -> str:
        return f"QuickCalls({self.what!r}, threaded={self.threaded})"

    @property
    def threaded(self) -> bool:
        """True while calls go to worker threads."""
        return self.clock() < self.until

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``: in place while calls are quick, else in a worker thread."""
        started = self.clock()
        if started < self.until:
            return await run_sync(fn, *args)
        try:
            return fn(*args)
        finally:
            ended = self.clock()
            if ended - started <= self.quick_seconds:
                self._hold = 0.0
            else:
                self._hold = min(max(2 * self._hold, HOLD_SECONDS), MAX_HOLD_SECONDS)
                self.until = ended + self._hold
                logger.debug(
                    "%s: one took %.1f ms on the event loop; they run in worker threads for %g s",
                    self.what,
                    (ended - started) * 1e3,
                    self._hold,
                )


def thread_count() -> int:
    """Worker threads alive, over every event loop (for tests)."""
    return sum(len(workers.threads) for workers in list(_live))


def _at_exit() -> None:
    for workers in list(_live):
        workers.finish()


def _after_fork() -> None:  # pragma: no cover - exercised in a forked child only
    global _workers_lock
    _workers.clear()
    _live.clear()
    _workers_lock = threading.Lock()


_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_at_exit)
else:  # pragma: no cover - every supported Python has it
    import atexit

    atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
