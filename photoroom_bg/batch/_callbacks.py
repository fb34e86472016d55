"""The caller's ``on_result`` and ``on_progress``, for a submitted batch called off its
event loop.

A submitted batch runs on the background loop, shared by every batch of the process. Run
there, a callback that takes its time (a database write, a network call, a ``sleep``) held
every task up while it ran: the answers to the calls under way, paid for, were not read,
their timeouts fired, and the calls were made again. Here each finished job's calls are
queued and made in a worker thread, one at a time, in the order the jobs ended. The worker of
the batch whose job ended takes no other input until they are made, as when they ran in its
place: a callback that acts on what it sees (cancels the batch, removes an output) does so
before that worker's next job, and a callback slower than the batch slows it down instead of
queueing without bound. The loop meanwhile goes on reading the answers of the calls under
way.

``run()`` runs on the caller's own loop, among the caller's tasks, whose objects (an
``asyncio.Queue``, an ``Event``) its callbacks may use: there they are called in place.
"""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable

import anyio

from .. import _threads
from .._logs import get_logger
from ._jobs import JobResult, Progress

__all__ = ["Callbacks", "in_callback_of"]

logger = get_logger("photoroom_bg.batch")

# the handle of the batch whose callback the current thread runs, if any
_CALLING: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "photoroom_bg_callback_of", default=None
)


def in_callback_of(handle: object) -> bool:
    """True in a callback of the batch ``handle`` watches: a wait for that batch there would
    wait for itself."""
    return _CALLING.get() is handle


class Callbacks:
    """One batch's callbacks: queued on the loop by :meth:`add`, made in order by
    :meth:`deliver` (a task of the batch), drained by :meth:`drain` before the batch ends.

    Args:
        on_result: called with each finished job.
        on_progress: called with the progress as that job finished.
        handle: the batch's handle (a callback cannot wait for its own batch).
        stop_for: stops the batch for what a callback raised that is no ``Exception``.

    Attributes:
        threaded: whether calls are made in a worker thread (else in place, by :meth:`add`).
    """

    def __init__(
        self,
        on_result: Callable[[JobResult], object] | None,
        on_progress: Callable[[Progress], object] | None,
        *,
        handle: object,
        stop_for: Callable[[BaseException, str], None],
    ) -> None:
        self._on_result = on_result
        self._on_progress = on_progress
        self._handle = handle
        self._stop_for = stop_for
        self._queue: deque[tuple[JobResult, Progress | None, anyio.Event]] = deque()
        self._more = anyio.Event()
        self._closed = False
        self._done = anyio.Event()
        self.threaded = True

    @property
    def wants_progress(self) -> bool:
        """Whether :meth:`add` needs the progress (``on_progress`` is set)."""
        return self._on_progress is not None

    def add(self, result: JobResult, progress: Progress | None) -> anyio.Event | None:
        """Queue the calls for a job that finished (on the loop); the event is set once they
        are made. Not threaded: make them now (``None``)."""
        if not self.threaded:
            try:
                self._call(result, progress)
            except BaseException as exc:  # as from the worker thread (see _threads.carried)
                self._raised(_threads.carried(exc, self._call, where=""))
            return None
        made = anyio.Event()
        self._queue.append((result, progress, made))
        self._more.set()
        return made

    async def deliver(self) -> None:
        """Make the queued calls, in order, until :meth:`drain` is called and none is left."""
        try:
            while True:
                while not self._queue:
                    if self._closed:
                        return
                    self._more = anyio.Event()
                    await self._more.wait()
                result, progress, made = self._queue[0]
                try:
                    await _threads.run_sync(self._call, result, progress)
                except anyio.get_cancelled_exc_class():
                    raise
                except BaseException as exc:  # handled here, on the loop, where it can stop
                    self._raised(exc)
                self._queue.popleft()
                made.set()
        finally:
            self._done.set()
            for _, _, made in self._queue:  # the batch is failing: no worker waits in vain
                made.set()

    def _call(self, result: JobResult, progress: Progress | None) -> None:
        """The two callbacks for one job."""
        token = _CALLING.set(self._handle)
        try:
            if self._on_result is not None:
                self._on_result(result)
            if self._on_progress is not None and progress is not None:
                self._on_progress(progress)
        finally:
            _CALLING.reset(token)

    def _raised(self, exc: BaseException) -> None:
        """On the loop: what a callback raised is logged, or stops the batch."""
        if isinstance(exc, Exception):
            logger.error("a batch callback failed; the batch goes on", exc_info=exc)
        else:  # sys.exit(), KeyboardInterrupt, pytest.fail()...
            self._stop_for(exc, "a batch callback")

    async def drain(self) -> None:
        """Wait until every queued call is made (the batch's jobs have all ended)."""
        self._closed = True
        self._more.set()
        await self._done.wait()
