"""The Server-Sent Events stream of a job."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ._executor import LiveJob
from ._serialize import item_from_result, progress_json
from ._state import ServiceState
from ._store import JobRecord

__all__ = ["event_stream"]


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def event_stream(
    state: ServiceState, record: JobRecord, url_for: Callable[[int], str]
) -> AsyncIterator[bytes]:
    """The event stream: live results as they come when this process runs the job; items
    as their records appear when the executor keeps them elsewhere (shard manifests); else
    the record polled until the job ends; then the remaining items."""
    jobs = state.jobs
    yield _sse("job", {"job_id": record.job_id, "image_count": record.image_count})
    sent: set[int] = set()
    elsewhere = (
        record.executor == state.executor.name
        and await state.executor.records(record.job_id) is not None
    )
    live: LiveJob | None = None if elsewhere else state.executor.live(record.job_id)
    seen = 0
    last_beat = time.monotonic()
    while True:
        if not elsewhere:
            live = state.executor.live(record.job_id) or live
        if live is not None:
            for result in live.results[seen:]:
                seen += 1
                item = item_from_result(result)
                if item.get("stored"):
                    item["output_url"] = url_for(result.index)
                sent.add(result.index)
                yield _sse("item", item)
            if live.progress is not None:
                yield _sse(
                    "progress", progress_json(live.progress, expected_total=live.image_count)
                )
            if live.ended:
                await live.recorded.wait()  # the record says how it ended
                break
            await live.wait_for_change(seen, 15.0)
        else:
            fresh = await jobs.store.load(record.job_id)
            if fresh is None or fresh.finished:
                break
            if elsewhere:
                for item in await jobs.items(fresh):
                    if item["index"] in sent or item["status"] in ("pending", "running"):
                        continue
                    if item.get("stored"):
                        item["output_url"] = url_for(item["index"])
                    sent.add(item["index"])
                    yield _sse("item", item)
            if fresh.progress:
                yield _sse("progress", fresh.progress)
            await asyncio.sleep(1.0)
        if time.monotonic() - last_beat > 15:
            last_beat = time.monotonic()
            yield b": keep-alive\n\n"
    final = await jobs.store.load(record.job_id) or record
    for item in await jobs.items(final):
        if item["index"] in sent or item["status"] in ("pending", "running"):
            continue
        if item.get("stored"):
            item["output_url"] = url_for(item["index"])
        yield _sse("item", item)
    yield _sse("done", await jobs.describe(final, include_items=False))
