"""The batch's storage gives the event loop no turn of its own on the way to a sink that
answers: each turn costs every image of a batch CPU (a pass of the loop, a task step)."""

from __future__ import annotations

from pathlib import Path

import anyio

from photoroom_bg import MemorySink, RetryPolicy
from photoroom_bg.batch._storage import Storage
from photoroom_bg.errors import StorageUnavailableError


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
