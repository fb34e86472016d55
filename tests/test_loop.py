"""The background loop behind every sync façade."""

from __future__ import annotations

import asyncio
import threading

import pytest

from photoroom_bg import _loop


async def _where() -> tuple[str, bool]:
    await asyncio.sleep(0)
    return threading.current_thread().name, _loop.in_background_loop()


def test_run_sync_runs_on_the_background_thread() -> None:
    name, inside = _loop.run_sync(_where())
    assert name == "photoroom-bg-loop"
    assert inside is True
    assert _loop.in_background_loop() is False


def test_run_sync_works_while_another_loop_runs_in_this_thread() -> None:
    async def notebook_cell() -> tuple[str, bool]:
        # as in Jupyter: a loop is already running in the calling thread
        return _loop.run_sync(_where())

    assert asyncio.run(notebook_cell()) == ("photoroom-bg-loop", True)


def test_run_sync_from_the_loop_thread_refuses_instead_of_deadlocking() -> None:
    async def nested() -> None:
        _loop.run_sync(_where())

    with pytest.raises(RuntimeError, match="await instead"):
        _loop.run_sync(nested())


def test_submit_returns_a_future_and_the_loop_is_reused() -> None:
    first = _loop.background_loop()
    future = _loop.submit(_where())
    assert future.result(timeout=5)[0] == "photoroom-bg-loop"
    assert _loop.background_loop() is first
