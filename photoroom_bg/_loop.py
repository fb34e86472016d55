"""A private background event loop: the thin sync face over the async core.

Sync callers (scripts, notebooks where a loop is already running in the main thread) hand
coroutines to one daemon thread that runs its own asyncio loop. Library code never calls
``asyncio.run``; async resources used through a sync façade (aiobotocore clients, httpx
``AsyncClient``) are created and used on this one loop only.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


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


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the background loop and block until it finishes.

    Safe to call while another event loop runs in the calling thread (Jupyter). Calling it
    from the background loop's own thread would deadlock, so that raises ``RuntimeError``.
    """
    if in_background_loop():
        coro.close()
        raise RuntimeError("run_sync() called from the photoroom-bg loop thread; await instead")
    return submit(coro).result(timeout)


def _shutdown() -> None:
    loop = _loop
    if loop is not None and not loop.is_closed() and loop.is_running():
        loop.call_soon_threadsafe(loop.stop)


atexit.register(_shutdown)
