"""A private background event loop: the thin sync face over the async core.

Sync callers (scripts, notebooks where a loop is already running in the main thread) hand
coroutines to one daemon thread that runs its own asyncio loop. Library code never calls
``asyncio.run``; async resources used through a sync façade (aiobotocore clients, httpx
``AsyncClient``) are created and used on this one loop only.

At interpreter exit, before Python stops its worker threads, the functions registered with
:func:`at_exit` run (submitted batches use it to stop starting jobs, store what is paid for
and flush their manifests), then the loop's per-loop resources are closed and it stops.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, wait
from typing import Any, TypeVar

from ._logs import get_logger

T = TypeVar("T")

logger = get_logger("photoroom_bg")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_exit_hooks: list[Callable[[], None]] = []
# loops whose thread is blocked in run_sync(): nothing can run on them until it returns
_blocked: dict[asyncio.AbstractEventLoop, int] = {}


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()


def background_loop() -> asyncio.AbstractEventLoop:
    """Return the shared background loop, starting its daemon thread on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed() or _thread is None or not _thread.is_alive():
            _loop = asyncio.new_event_loop()
            _thread = threading.Thread(
                target=_run_forever, args=(_loop,), name="photoroom-bg-loop", daemon=True
            )
            _thread.start()
        return _loop


def in_background_loop() -> bool:
    """True when called from the background loop's own thread."""
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> Future[T]:
    """Schedule ``coro`` on the background loop; return a concurrent future for its result."""
    return asyncio.run_coroutine_threadsafe(coro, background_loop())


@contextlib.contextmanager
def _blocking_caller() -> Iterator[None]:
    """Mark the calling thread's own running loop (a notebook's) as blocked meanwhile."""
    try:
        caller = asyncio.get_running_loop()
    except RuntimeError:
        yield
        return
    with _lock:
        _blocked[caller] = _blocked.get(caller, 0) + 1
    try:
        yield
    finally:
        with _lock:
            _blocked[caller] -= 1
            if not _blocked[caller]:
                del _blocked[caller]


def is_blocked(loop: asyncio.AbstractEventLoop) -> bool:
    """True while ``loop``'s thread waits in :func:`run_sync`: work scheduled on that loop
    cannot run before the call returns, so waiting for it there would deadlock."""
    with _lock:
        return loop in _blocked


#: how long an interrupted :func:`run_sync` waits for its coroutine to finish cancelling
CANCEL_WAIT = 10.0


def run_sync(
    coro: Coroutine[Any, Any, T], timeout: float | None = None, *, cancel: bool = True
) -> T:
    """Run ``coro`` on the background loop and block until it finishes.

    Safe to call while another event loop runs in the calling thread (Jupyter). Calling it
    from the background loop's own thread would deadlock, so that raises ``RuntimeError``.
    An interrupt while blocked here (Ctrl-C, or ``SystemExit`` from a signal handler)
    cancels ``coro`` and waits up to :data:`CANCEL_WAIT` seconds for it to clean up before
    it propagates, so that nothing the call began goes on behind the caller's back; with
    ``cancel=False`` (a close, best finished) it is left to finish.
    """
    if in_background_loop():
        coro.close()
        raise RuntimeError("run_sync() called from the photoroom-bg loop thread; await instead")
    interrupted = threading.Event()
    running: list[asyncio.Task[Any]] = []

    async def guarded() -> T:
        if interrupted.is_set():  # interrupted before it began: it never begins
            coro.close()
            raise asyncio.CancelledError
        task = asyncio.current_task()
        assert task is not None
        running.append(task)
        return await coro

    def cancel_it() -> None:  # on the loop: before guarded() begins, or while it runs
        for task in running:
            task.cancel()

    loop = background_loop()
    with _blocking_caller():
        future = asyncio.run_coroutine_threadsafe(guarded(), loop)
        try:
            return future.result(timeout)
        except (KeyboardInterrupt, SystemExit):
            if not cancel:
                raise
            interrupted.set()
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs
                loop.call_soon_threadsafe(cancel_it)
            # it cleans up before the interrupt goes on; a second interrupt ends this wait
            wait([future], timeout=CANCEL_WAIT)
            raise


def at_exit(hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook`` at interpreter exit, while worker threads still accept work; returns a
    function that unregisters it."""
    with _lock:
        _exit_hooks.append(hook)

    def remove() -> None:
        with _lock, contextlib.suppress(ValueError):
            _exit_hooks.remove(hook)

    return remove


def _run_exit_hooks() -> None:
    with _lock:
        hooks = list(reversed(_exit_hooks))
        _exit_hooks.clear()
    for hook in hooks:
        try:
            hook()
        except Exception:
            logger.exception("a photoroom_bg exit hook failed")


def _shutdown() -> None:
    _run_exit_hooks()
    loop, thread = _loop, _thread
    if loop is None or loop.is_closed() or not loop.is_running():
        return
    if thread is None or not thread.is_alive():  # a forked child's copy: nothing runs it
        return
    from ._perloop import close_loop_resources

    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(close_loop_resources(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)


# Python stops accepting work in its thread pools (asyncio.to_thread) before plain atexit
# functions run. threading's own exit hooks run first, the latest registered first: the
# thread pools' hook and that of our worker threads (which finishes the calls queued) are
# registered on import, so importing them here puts ours before both.
import concurrent.futures.thread  # noqa: E402, F401

from . import _threads  # noqa: E402, F401

_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_shutdown)
else:  # pragma: no cover - every supported Python has it
    atexit.register(_shutdown)
