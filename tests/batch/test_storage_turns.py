"""The batch gives the event loop no turn it does not need: on the way to a sink that
answers, and in handing inputs from the listing to the workers. Each turn costs every image
of a batch CPU (a pass of the loop, a task step)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from photoroom_bg import BatchRemover, ImageResult, MemorySink, RetryPolicy
from photoroom_bg.batch._storage import Storage
from photoroom_bg.errors import StorageUnavailableError

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
