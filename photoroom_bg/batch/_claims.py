"""Outputs being made right now by any batch of this process, by destination and key.

A batch that is about to look a key up and pay for its cut-out claims the key first; a batch
of the same process that wants the same key in the same destination (the same remover
submitted twice, two removers on one folder, two jobs of a service) waits for the claim and
then looks again, so it finds the cut-out stored instead of paying for it once more. Batches
may run on different event loops in different threads: a claim's holder wakes its waiters
thread-safely, on each waiter's own loop (asyncio or trio).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

from ..sinks import FileSystemSink, S3Sink

__all__ = ["making", "place_of"]

_lock = threading.Lock()
_held: dict[tuple[Hashable, str], list[Callable[[], None]]] = {}  # claim -> its waiters' wakes


def place_of(sink: object) -> Hashable:
    """Where ``sink`` stores: the same for two sinks over one folder or bucket prefix."""
    if isinstance(sink, FileSystemSink):
        return ("file", str(sink.root))
    if isinstance(sink, S3Sink):
        return ("s3", sink.endpoint_url, sink.bucket, sink.prefix)
    return ("object", id(sink))  # alive while a claim on it is held: the id is not reused


def _event() -> tuple[Callable[[], Awaitable[Any]], Callable[[], None]]:
    """An event of the running loop, and a way to set it from any thread (a no-op once that
    loop has ended)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio (not a dependency: imported only under it)
        trio: Any = importlib.import_module("trio")

        trio_event = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake_trio() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(trio_event.set)

        return trio_event.wait, wake_trio
    event = asyncio.Event()

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the waiter's loop is closed
            loop.call_soon_threadsafe(event.set)

    return event.wait, wake


@contextlib.asynccontextmanager
async def making(
    place: Hashable, key: str, wait: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
) -> AsyncIterator[bool]:
    """Hold ``key`` in ``place`` for the block, after whoever holds it now; ``wait`` awaits
    (so a batch can stop its waiting). Yields whether another batch held it first."""
    claim = (place, key)
    waited = False
    while True:
        with _lock:
            waiters = _held.get(claim)
            if waiters is None:
                _held[claim] = []
                break
            until, wake = _event()
            waiters.append(wake)
        try:
            await wait(until)
        finally:
            with _lock, contextlib.suppress(ValueError):
                waiters.remove(wake)  # still there if this wait was cancelled
        waited = True
    try:
        yield waited
    finally:
        with _lock:
            woken = _held.pop(claim)
        for wake in woken:
            wake()
