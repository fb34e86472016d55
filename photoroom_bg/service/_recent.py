"""RecentOutputs: the cut-outs of recent requests that were not asked to be stored.

``POST /api/v1/remove-background`` without ``"store": true`` answers with the cut-out's bytes
and keeps nothing in the service's sink. A caller whose HTTP client gave up before the answer
(a timeout, a dropped connection) retries; the first request went on and Photoroom billed it.
Kept here for a while, under the key the service names outputs by (content and options), the
retry finds it, and a retry that arrives while the first call is still under way waits for it
(the batch's claims), instead of paying for the same image again.

Each request works through a :class:`RecentSession`: what it puts or finds is held until the
request has answered (a ZIP of several large cut-outs reads the first ones back only once the
last call is done), and forgotten only after that, oldest first, past the budget or the age.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import timedelta

from ..sinks import MemorySink, StoredObject

__all__ = ["KEEP_SECONDS", "RecentOutputs", "RecentSession"]

#: How long an unclaimed cut-out is kept for a retry.
KEEP_SECONDS = 15 * 60.0


class RecentOutputs(MemorySink):
    """A memory sink that forgets: the oldest cut-outs go once they hold more than
    ``max_bytes`` or are older than :data:`KEEP_SECONDS`, except those a request under way
    holds (see :meth:`session`)."""

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
        self._holds: dict[str, int] = {}  # key -> requests under way that need it

    def __repr__(self) -> str:
        return (
            f"RecentOutputs(objects={len(self._used)}, bytes={self.total_bytes}, "
            f"held={len(self._holds)})"
        )

    def session(self) -> RecentSession:
        """The recent outputs as one request sees them: what it puts or finds there stays
        until :meth:`RecentSession.aclose` (the request has answered)."""
        return RecentSession(self)

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
        """True when ``key`` is kept and not yet expired (it then counts as just used)."""
        await self._forget()
        if not await super().exists(key):
            return False
        self._touch(key)
        return True

    async def stat(self, key: str) -> StoredObject:
        """The description of ``key``, when kept and not yet expired (it then counts as just
        used)."""
        await self._forget()
        stored = await super().stat(key)
        self._touch(key)
        return stored

    def _touch(self, key: str) -> None:
        self._used.pop(key, None)
        self._used[key] = self._clock()

    def _hold(self, key: str) -> None:
        self._holds[key] = self._holds.get(key, 0) + 1

    def _release(self, key: str) -> None:
        left = self._holds.pop(key, 0) - 1
        if left > 0:
            self._holds[key] = left

    async def _forget(self) -> None:
        now = self._clock()
        for key, used in list(self._used.items()):
            if key in self._holds:
                continue  # a request under way reads it back
            if now - used < self.keep_seconds and self.total_bytes <= self.budget:
                break  # the rest are younger still
            del self._used[key]
            await self.delete(key)


class RecentSession:
    """One request's view of :class:`RecentOutputs` (a sink): every object it puts or finds
    is held there, never forgotten, until :meth:`aclose`; afterwards, it goes by the usual
    rules. Closed, it holds nothing more (a batch that outlives its request still stores its
    paid cut-outs, for a retry)."""

    durable = False

    def __init__(self, recent: RecentOutputs) -> None:
        self.recent = recent
        self._held: set[str] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"RecentSession(held={len(self._held)}, closed={self._closed})"

    @property
    def view_of(self) -> RecentOutputs:
        """The sink this is a view of: requests' batches claim keys there, so that a retry
        waits for the first call instead of paying for the same image again."""
        return self.recent

    def _hold(self, key: str) -> None:
        if not self._closed and key not in self._held:
            self._held.add(key)
            self.recent._hold(key)

    def _drop(self, key: str) -> None:
        if key in self._held:
            self._held.discard(key)
            self.recent._release(key)

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Keep ``data`` under ``key``, held for this request."""
        self._hold(key)  # before the put, whose clean-up must not take it
        try:
            return await self.recent.put(key, data, content_type=content_type, metadata=metadata)
        except BaseException:
            self._drop(key)
            raise

    async def exists(self, key: str) -> bool:
        """True when ``key`` is kept; it is then held for this request."""
        self._hold(key)
        found = await self.recent.exists(key)
        if not found:
            self._drop(key)
        return found

    async def stat(self, key: str) -> StoredObject:
        """The description of ``key``, which is then held for this request."""
        self._hold(key)
        try:
            return await self.recent.stat(key)
        except BaseException:
            self._drop(key)
            raise

    async def get(self, key: str) -> bytes:
        """The bytes under ``key``."""
        return await self.recent.get(key)

    async def url(self, key: str, *, expires: float | timedelta = 3600) -> str:
        """The ``memory://`` URI of ``key``."""
        return await self.recent.url(key, expires=expires)

    async def delete(self, key: str) -> None:
        """Remove ``key`` if present."""
        self._drop(key)
        await self.recent.delete(key)

    async def aclose(self) -> None:
        """The request has answered: release what it holds (kept for retries, by the usual
        rules)."""
        self._closed = True
        for key in list(self._held):
            self._drop(key)
        await self.recent._forget()  # what they held may have taken it past its budget
