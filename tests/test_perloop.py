"""PerLoop: one resource per event loop, each closed on its own loop."""

from __future__ import annotations

import asyncio

from photoroom_bg import _loop
from photoroom_bg._perloop import PerLoop


def test_each_loop_gets_its_own_resource_closed_on_that_loop() -> None:
    made: list[asyncio.AbstractEventLoop] = []
    closed: list[tuple[int, asyncio.AbstractEventLoop]] = []

    async def make() -> int:
        made.append(asyncio.get_running_loop())
        return len(made)

    async def close(item: int) -> None:
        closed.append((item, asyncio.get_running_loop()))

    table: PerLoop[int] = PerLoop(make, close)

    async def twice() -> tuple[int, int]:
        return await table.get(), await table.get()

    on_background = _loop.run_sync(twice())
    assert on_background == (1, 1)  # made once, then reused

    async def here() -> int:
        mine = await table.get()
        await table.aclose()
        return mine

    assert asyncio.run(here()) == 2
    assert sorted(item for item, _ in closed) == [1, 2]
    assert dict(closed)[1] is _loop.background_loop()  # closed where it was made
    assert dict(closed)[2] is made[1]
    assert len(table) == 0
