"""RecentOutputs: the cut-outs of recent requests that were not asked to be stored.

``POST /api/v1/remove-background`` without ``"store": true`` answers with the cut-out's bytes
and keeps nothing in the service's sink. A caller whose HTTP client gave up before the answer
(a timeout, a dropped connection) retries; the first request went on and Photoroom billed it.
Kept here for a while, under the key the service names outputs by (content and options), the
retry finds it, and a retry that arrives while the first call is still under way waits for it
(the batch's claims), instead of paying for the same image again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from ..sinks import MemorySink, StoredObject

__all__ = ["KEEP_SECONDS", "RecentOutputs"]

#: How long an unclaimed cut-out is kept for a retry.
KEEP_SECONDS = 15 * 60.0
#: A cut-out younger than this is never evicted: the request that made it, or the retry that
#: found it, still has to read it back.
PIN_SECONDS = 60.0


class RecentOutputs(MemorySink):
    """A memory sink that forgets: the oldest cut-outs go once they hold more than
    ``max_bytes`` or are older than :data:`KEEP_SECONDS`, except those put or found in the
    last :data:`PIN_SECONDS`."""

    def __init__(
        self,
        max_bytes: int,
        *,
        keep_seconds: float = KEEP_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.budget = max_bytes
        self.keep_seconds = keep_seconds
        self._clock = clock
        self._used: dict[str, float] = {}  # key -> when last put or found, oldest first

    def __repr__(self) -> str:
        return f"RecentOutputs(objects={len(self._used)}, bytes={self.total_bytes})"

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Keep ``data`` under ``key``; then forget the oldest cut-outs past the budget."""
        stored = await super().put(key, data, content_type=content_type, metadata=metadata)
        self._touch(key)
        await self._forget()
        return stored

    async def exists(self, key: str) -> bool:
        """True when ``key`` is kept and not yet expired (it is then kept for a while more:
        the caller reads it next)."""
        await self._forget()
        if not await super().exists(key):
            return False
        self._touch(key)
        return True

    def _touch(self, key: str) -> None:
        self._used.pop(key, None)
        self._used[key] = self._clock()

    async def _forget(self) -> None:
        now = self._clock()
        for key, used in list(self._used.items()):
            age = now - used
            if age < PIN_SECONDS:
                break  # the rest are younger still
            if age < self.keep_seconds and self.total_bytes <= self.budget:
                break
            del self._used[key]
            await self.delete(key)
