"""The batch's progress bar: a display, which nothing that happens to it may stop the batch for.

A bar whose stream fails (``photoroom-bg ... 2>&1 | tee log`` with ``tee`` gone, a closed
terminal, a full disk under a redirected ``stderr``) or whose widget fails would otherwise
raise out of the job that finished, and end the batch with calls under way, paid for and
then dropped. Here the bar stops drawing, one warning says so, and the batch goes on.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

from .._logs import get_logger

logger = get_logger("photoroom_bg.batch")

#: Writes of the bar waiting for its stream, past which the waiting frames are dropped.
PENDING_WRITES = 64
#: How long closing the bar waits for its last frames to be written.
CLOSE_WAIT_SECONDS = 1.0


class _Stream:
    """The bar's stream, written by a thread of its own: what it cannot write is dropped, and
    the bar is told once.

    The bar is drawn from the batch's event loop. A terminal paused with Ctrl-S, or a pipe
    whose reader stopped reading (``2>&1 | less``), blocks a write for as long as it stays so;
    made on the loop, that write held up every call under way, paid for, until its timeout
    fired, or for good. Here the loop only queues the text; frames queued beyond
    :data:`PENDING_WRITES` are dropped (a later frame shows the same counters).
    """

    def __init__(self, stream: TextIO, failed: Callable[[BaseException], None]) -> None:
        self._stream = stream
        self._failed = failed
        self.broken = False
        self._pending: deque[str | None] = deque()  # text, or None: a flush
        self._ready = threading.Condition()
        self._writing = False
        self._finished = False
        self._thread: threading.Thread | None = None

    def write(self, text: str) -> int:
        if not self.broken:
            self._queue(text)
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            self._queue(None)

    def _queue(self, item: str | None) -> None:
        with self._ready:
            if len(self._pending) >= PENDING_WRITES:
                if item is None:
                    return
                self._pending.clear()  # the terminal takes nothing: the latest frame is enough
            self._pending.append(item)
            self._ready.notify()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._write_queued, name="photoroom-bg-progress", daemon=True
                )
                self._thread.start()

    def _write_queued(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._writing = False
                    self._ready.notify_all()
                    if self._finished:
                        return
                    self._ready.wait()
                item = self._pending.popleft()
                self._writing = True
            try:
                if item is None:
                    self._stream.flush()
                else:
                    self._stream.write(item)
            except (OSError, ValueError) as exc:  # ValueError: a stream closed in-process
                with self._ready:
                    self.broken = True
                    self._pending.clear()
                    self._writing = False
                    self._ready.notify_all()
                self._failed(exc)
                return

    def finish(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for what is queued to be written (the last frame,
        before what follows the bar); the thread ends once it is."""
        with self._ready:
            self._finished = True
            self._ready.notify_all()
            self._ready.wait_for(lambda: not (self._pending or self._writing), timeout)

    def __getattr__(self, name: str) -> Any:  # fileno() for the terminal's width, encoding
        return getattr(self._stream, name)


class ProgressBar:
    """A ``tqdm`` bar for one batch; the first error it meets turns it off, with a warning."""

    def __init__(self, tqdm: Callable[..., Any]) -> None:
        self._bar: Any = None
        self._off = False
        stream = sys.stdout if _draws_in_a_notebook(tqdm) else sys.stderr
        self._stream = _Stream(stream, self._fail)
        try:
            self._bar = tqdm(desc="cut-outs", unit="img", dynamic_ncols=True, file=self._stream)
        except Exception as exc:  # a widget that cannot be made
            self._fail(exc)

    def job_done(self, counted: bool, **postfix: int) -> None:
        """One job ended (``counted``: it is part of the bar's total, not cancelled)."""

        def show(bar: Any) -> None:
            if counted:
                bar.update(1)
            bar.set_postfix(**postfix, refresh=False)

        self._do(show)

    def stopped(self) -> None:
        self._do(lambda bar: bar.set_description("stopped", refresh=False))

    def set_total(self, total: int) -> None:
        def show(bar: Any) -> None:
            bar.total = total
            bar.refresh()

        self._do(show)

    def close(self) -> None:
        self._do(lambda bar: bar.close())
        self._stream.finish(CLOSE_WAIT_SECONDS)

    def _do(self, action: Callable[[Any], object]) -> None:
        if self._off or self._bar is None:
            return
        try:
            action(self._bar)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._off:
            return
        self._off = True
        if self._bar is not None:
            self._bar.disable = True  # its close() and __del__ then draw nothing more
        logger.warning(
            "the progress bar cannot be drawn (%s: %s); the batch goes on without it",
            type(exc).__name__,
            exc,
        )


def _draws_in_a_notebook(tqdm: Callable[..., Any]) -> bool:
    """Whether ``tqdm`` is ``tqdm.auto``'s notebook bar, which writes to ``stdout``."""
    notebook = sys.modules.get("tqdm.notebook")  # imported by tqdm.auto in a notebook only
    bar = getattr(notebook, "tqdm_notebook", None)
    return isinstance(tqdm, type) and isinstance(bar, type) and issubclass(tqdm, bar)
