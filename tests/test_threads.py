"""The worker threads that run blocking file work off the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import subprocess
import sys
import textwrap
import threading
import weakref
from pathlib import Path

import pytest

from photoroom_bg import _threads

where: contextvars.ContextVar[str] = contextvars.ContextVar("where", default="unset")


def _workers() -> _threads._Workers:
    return _threads._for(asyncio.get_running_loop())


async def test_results_errors_and_context_come_back() -> None:
    where.set("caller")
    assert await _threads.run_sync(lambda: (threading.current_thread().name, where.get())) == (
        "photoroom_bg-worker",
        "caller",
    )
    with pytest.raises(KeyError, match="missing"):
        await _threads.run_sync({}.__getitem__, "missing")
    assert await _threads.run_sync(sum, [1, 2, 3]) == 6


async def test_many_results_are_delivered_with_few_wakeups_of_the_loop() -> None:
    loop = asyncio.get_running_loop()
    wakeups = 0
    original = loop.call_soon_threadsafe

    def counting(*args: object, **kwargs: object) -> asyncio.Handle:
        nonlocal wakeups
        wakeups += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(*(_threads.run_sync(pow, i, 2) for i in range(500)))
    finally:
        del loop.call_soon_threadsafe
    assert results == [i * i for i in range(500)]
    # asyncio.to_thread wakes the loop once per call
    assert 1 <= wakeups < 250


async def test_a_blocked_call_does_not_hold_up_the_others() -> None:
    release = threading.Event()
    blocked = asyncio.ensure_future(_threads.run_sync(release.wait, 30))
    try:
        # both calls queue behind the blocked one; another worker must take them
        quick = await asyncio.wait_for(
            asyncio.gather(_threads.run_sync(pow, 2, 10), _threads.run_sync(pow, 3, 2)), 10
        )
        assert quick == [1024, 9]
        assert not blocked.done()
    finally:
        release.set()
    assert await blocked is True


async def test_threads_stay_within_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    workers = _workers()
    monkeypatch.setattr(workers, "max_threads", 3)
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    started = threading.Semaphore(0)

    def wait() -> int:
        started.release()
        gate.wait(30)
        return threading.get_ident()

    calls = [asyncio.ensure_future(_threads.run_sync(wait)) for _ in range(8)]
    try:
        for _ in range(3):  # three start although every one blocks
            assert await loop.run_in_executor(None, started.acquire, True, 30)
        assert len(workers.threads) == 3
    finally:
        gate.set()
    idents = await asyncio.gather(*calls)
    assert len(set(idents)) == 3
    assert len(workers.threads) <= 3


async def test_cancelling_the_caller_stops_the_wait_not_the_call() -> None:
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    def slow() -> str:
        started.set()
        release.wait(30)
        finished.set()
        return "done"

    task = asyncio.ensure_future(_threads.run_sync(slow))
    assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    assert await _threads.run_sync(finished.wait, 30) is True
    assert await _threads.run_sync(pow, 2, 3) == 8  # and the workers still serve


async def test_a_call_cancelled_before_it_begins_never_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_workers(), "max_threads", 1)
    release = threading.Event()
    ran: list[str] = []
    blocking = asyncio.ensure_future(_threads.run_sync(release.wait, 30))
    queued = asyncio.ensure_future(_threads.run_sync(ran.append, "queued"))
    await asyncio.sleep(0)
    queued.cancel()
    release.set()
    assert await blocking is True
    await _threads.run_sync(ran.append, "later")  # runs after the cancelled one was taken
    assert ran == ["later"]
    assert queued.cancelled()


async def test_idle_workers_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_threads, "IDLE_SECONDS", 0.05)
    await asyncio.gather(*(_threads.run_sync(pow, i, 2) for i in range(20)))
    threads = list(_workers().threads)
    assert threads
    loop = asyncio.get_running_loop()
    for thread in threads:
        await loop.run_in_executor(None, thread.join, 30)
    assert not any(thread.is_alive() for thread in threads)
    assert not _workers().threads
    assert await _threads.run_sync(pow, 2, 5) == 32  # a new worker starts for new work


def test_an_event_loop_that_ended_is_not_kept_alive() -> None:
    # one set of workers per loop, kept in a table keyed by the loop: the workers must not
    # keep their loop (and so their own entry) alive, or every asyncio.run() would leak one
    async def main() -> weakref.ref[asyncio.AbstractEventLoop]:
        await _threads.run_sync(pow, 2, 2)
        return weakref.ref(asyncio.get_running_loop())

    gone = [asyncio.run(main()) for _ in range(3)]
    gc.collect()
    assert [ref() for ref in gone] == [None, None, None]


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_queued_calls_finish_before_the_interpreter_exits(tmp_path: Path) -> None:
    # the loop ends without waiting for the calls: exit still lets those under way finish,
    # as it does for asyncio.to_thread, so a write under way is never cut short
    run = _python(
        """
        import asyncio, sys, threading, time
        from pathlib import Path
        from photoroom_bg import _threads

        out = Path(sys.argv[1])
        started = threading.Semaphore(0)

        def write(name):
            started.release()
            time.sleep(0.3)  # a slow disk
            (out / name).write_text("kept")

        def all_started():
            for _ in range(3):
                started.acquire()

        async def main():
            for name in ("a", "b", "c"):
                asyncio.ensure_future(_threads.run_sync(write, name))
            await asyncio.get_running_loop().run_in_executor(None, all_started)

        asyncio.run(main())
        """,
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    assert run.stderr == ""


# -- calls run in place while they are quick -------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_quick_calls_run_in_place_and_go_to_threads_for_a_while_after_a_slow_one() -> None:
    clock = _Clock()
    calls = _threads.QuickCalls("test calls")
    calls.clock = clock
    here = threading.current_thread()

    def call(takes: float = 0.0) -> threading.Thread:
        clock.now += takes
        return threading.current_thread()

    assert await calls.run(call) is here
    assert await calls.run(call, 0.001) is here  # under QUICK_SECONDS: still quick
    assert await calls.run(call, 0.5) is here  # this one held the loop up...
    assert calls.threaded
    assert (await calls.run(call)).name == "photoroom_bg-worker"  # ...the next ones do not
    clock.now += _threads.HOLD_SECONDS
    assert not calls.threaded
    assert await calls.run(call, 0.5) is here  # a probe in place, slow again: a longer hold
    assert calls.until - clock.now == 2 * _threads.HOLD_SECONDS
    clock.now = calls.until
    assert await calls.run(call) is here  # a quick probe: back in place, the hold forgotten
    await calls.run(call, 0.5)
    assert calls.until - clock.now == _threads.HOLD_SECONDS
    for _ in range(10):  # storage that stays slow: a probe a minute at most
        clock.now = calls.until
        await calls.run(call, 0.5)
    assert calls.until - clock.now == _threads.MAX_HOLD_SECONDS


async def test_a_quick_call_raises_its_own_error_and_a_slow_failure_counts_too() -> None:
    clock = _Clock()
    calls = _threads.QuickCalls("test calls")
    calls.clock = clock

    def fail(takes: float) -> None:
        clock.now += takes
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError, match="gone"):
        await calls.run(fail, 0.0)
    assert not calls.threaded
    with pytest.raises(FileNotFoundError, match="gone"):
        await calls.run(fail, 1.0)  # a call that hung, then failed, held the loop up too
    assert calls.threaded
    with pytest.raises(FileNotFoundError, match="gone"):
        await calls.run(fail, 0.0)  # from a worker thread, the same error
