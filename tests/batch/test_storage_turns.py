"""The batch gives the event loop no turn it does not need: on the way to a sink that
answers, and in handing inputs from the listing to the workers. Each turn costs every image
of a batch CPU (a pass of the loop, a task step)."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from photoroom_bg import BatchRemover, FileSystemSink, ImageResult, MemorySink, RetryPolicy
from photoroom_bg.batch import JobStatus
from photoroom_bg.batch._storage import Storage, Unstored
from photoroom_bg.errors import StorageUnavailableError
from photoroom_bg.sinks import StoredObject

from .conftest import photo


def _storage(tmp_path: Path) -> Storage:
    return Storage(
        MemorySink(),
        tmp_path / "spill",
        RetryPolicy(initial_delay=0.01, max_delay=0.02),
        retry_budget=5,
        outage_budget=5,
        stop=lambda reason: None,
    )


async def test_a_look_up_and_a_store_take_no_turn_of_the_event_loop(tmp_path: Path) -> None:
    storage = _storage(tmp_path)
    ran: list[str] = []

    async def other() -> None:
        ran.append("other task")

    async with anyio.create_task_group() as tg:
        storage.task_group = tg
        tg.start_soon(other)  # runs at the next turn of the loop
        assert await storage.lookup("a.png") is False
        stored = await storage.store("a.png", b"cut-out", "image/png", {})
        assert await storage.lookup("a.png") == stored
        assert ran == []
    assert ran == ["other task"]


async def test_during_an_outage_a_store_still_waits_for_the_sink(tmp_path: Path) -> None:
    storage = _storage(tmp_path)
    async with anyio.create_task_group() as tg:
        storage.task_group = tg
        probes: list[str] = []

        async def probe(key: str) -> bool:  # the prober's look: the sink is back
            probes.append(key)
            return False

        storage.sink.exists = probe  # type: ignore[method-assign]
        storage.outage(StorageUnavailableError("connection refused"))
        stored = await storage.store("a.png", b"cut-out", "image/png", {})
        assert probes  # stored only once the prober found the sink answering
        assert stored.key == "a.png"  # type: ignore[union-attr]


class EchoEngine:
    """Answers each image with itself, after a few turns of the event loop: 0 to 12, so
    that the answers come one at a time, as from a server."""

    name = "echo"
    bills = False

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def process(self, image: bytes, options: Any) -> ImageResult:
        self.log.append("made")
        for _ in range(len(self.log) * 7 % 13):
            await anyio.lowlevel.checkpoint()
        return ImageResult(image)

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("concurrency", [1, 2, 8, 64])
async def test_the_listing_refills_the_workers_queue_in_bursts(concurrency: int) -> None:
    """Once the workers' queue is full, the listing waits until they have taken half of it:
    it wakes once per half a queue, not once per input taken."""
    log: list[str] = []
    images = [photo() for _ in range(48)]

    def listed() -> Iterator[bytes]:
        for image in images:
            log.append("listed")
            yield image

    batch = BatchRemover(
        engine=EchoEngine(log), sink=MemorySink(), concurrency=concurrency, keep_results=False
    )
    report = await batch.run(listed())
    assert report.succeeded_count == 48
    assert log.count("made") == 48
    bursts = sum(1 for i, what in enumerate(log) if what == "listed" and log[i - 1 : i] != [what])
    assert bursts <= 2 + 48 // max(1, concurrency // 2)


def _files_storage(tmp_path: Path, sink: Any = None, timeout: float = 300.0) -> Storage:
    return Storage(
        sink if sink is not None else FileSystemSink(tmp_path / "out"),
        tmp_path / "spill",
        RetryPolicy(initial_delay=0.01, max_delay=0.02),
        retry_budget=5,
        outage_budget=5,
        timeout=timeout,
        stop=lambda reason: None,
    )


def _count_scopes_and_timers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, an item for each cancel scope entered and each timer the loop is given."""
    made: list[str] = []
    scope = type(anyio.CancelScope())  # the running backend's class
    enter = scope.__enter__
    loop = asyncio.get_running_loop()
    call_at = loop.call_at

    def entered(self: Any) -> Any:
        made.append("scope")
        return enter(self)

    def timer(when: float, *args: Any, **kwargs: Any) -> Any:
        made.append("timer")
        return call_at(when, *args, **kwargs)

    monkeypatch.setattr(scope, "__enter__", entered)
    monkeypatch.setattr(loop, "call_at", timer)
    return made


async def test_a_file_system_put_and_look_up_in_place_need_no_scope_or_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # they run on the loop with no turn of it before the rename (the put shields its wait
    # for the folder's fsync itself): a shield, a timeout and their timer did nothing but
    # cost CPU for every image
    sink = FileSystemSink(tmp_path / "out")
    # on the loop however long an fsync takes: on a busy machine one can take longer than
    # the quick calls' limit, and the calls after it (rightly) go to worker threads, through
    # the scopes this test counts (that path has tests of its own)
    sink._quick_puts.clock = sink._quick_lookups.clock = lambda: 0.0
    storage = _files_storage(tmp_path, sink)
    async with anyio.create_task_group() as tg:
        storage.task_group = tg
        made = _count_scopes_and_timers(monkeypatch)
        for index in range(5):
            key = f"{index}.png"
            assert await storage.lookup(key) is False
            stored = await storage.store(key, b"cut-out", "image/png", {})
            assert isinstance(stored, StoredObject)
            assert await storage.lookup(key) == stored
        assert made == []
        assert storage.looks_up_in_place()  # so the batch asks without a scope of its own
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i}.png" for i in range(5)]


async def test_a_failed_in_place_put_is_retried_and_a_hanging_override_still_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = _files_storage(tmp_path)
    real_write = os.write
    failures = [OSError(errno.EIO, "Input/output error")]

    def write(fd: int, data: Any) -> int:
        if failures:
            raise failures.pop()
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    async with anyio.create_task_group() as tg:
        storage.task_group = tg
        stored = await storage.store("a.png", b"cut-out", "image/png", {})
    assert isinstance(stored, StoredObject)  # the in-place attempt failed, the retry stored
    assert (tmp_path / "out" / "a.png").read_bytes() == b"cut-out"

    class Hanging(FileSystemSink):
        """A subclass whose put never returns: not run as if it were the sink's own."""

        async def put(self, key: str, data: bytes, **kwargs: Any) -> StoredObject:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    storage = _files_storage(tmp_path, Hanging(tmp_path / "hang"), timeout=0.05)
    async with anyio.create_task_group() as tg:
        storage.task_group = tg
        kept = await storage.store("b.png", b"cut-out", "image/png", {})
    assert isinstance(kept, Unstored)
    assert kept.status is JobStatus.SPILLED
    assert (tmp_path / "spill" / "b.png").read_bytes() == b"cut-out"
