"""MemorySink: objects kept in a dict, for notebooks and tests."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta
from urllib.parse import quote

from .._numbers import check_count
from ..errors import ObjectNotFoundError, StorageFullError
from ._base import StoredObject
from ._common import check_key, seconds, sha256_checksum

__all__ = ["MemorySink"]


class MemorySink:
    """Keeps objects in memory.

    Args:
        max_bytes: refuse a put that would take the total size over this many bytes
            (:class:`~photoroom_bg.errors.StorageFullError`); ``None`` for no cap.

    ``url()`` returns a ``memory://`` URI: the bytes are read with :meth:`get`, or through
    :attr:`objects`.
    """

    #: Its objects last as long as the process (and the sink): a batch resuming from a
    #: manifest looks each recorded output up here, and makes again one that is not, as it
    #: does for ``FileSystemSink(durable=False)``, instead of trusting the record.
    durable = False

    def __init__(self, *, max_bytes: int | None = None) -> None:
        if max_bytes is not None:
            check_count("max_bytes", max_bytes, 0)
        self.max_bytes = max_bytes
        self._objects: dict[str, tuple[bytes, StoredObject]] = {}
        self._bytes = 0  # kept as objects come and go: a put never walks them all
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"MemorySink(objects={len(self._objects)}, bytes={self.total_bytes})"

    @property
    def total_bytes(self) -> int:
        """Bytes held."""
        return self._bytes

    @property
    def objects(self) -> dict[str, bytes]:
        """A snapshot ``{key: bytes}`` of everything stored."""
        return {key: data for key, (data, _) in self._objects.items()}

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Store ``data`` under ``key`` (replacing any previous object)."""
        check_key(key)
        async with self._lock:
            previous = len(self._objects[key][0]) if key in self._objects else 0
            if self.max_bytes is not None and self._bytes - previous + len(data) > self.max_bytes:
                raise StorageFullError(
                    f"MemorySink is full: storing {key!r} ({len(data):,} bytes) would "
                    f"exceed max_bytes={self.max_bytes:,}"
                )
            uri = "memory://" + quote(key, safe="/")
            stored = StoredObject(
                key=key,
                size=len(data),
                content_type=content_type,
                checksum=sha256_checksum(data),
                uri=uri,
                url=uri,
                metadata=dict(metadata or {}),
            )
            self._objects[key] = (bytes(data), stored)
            self._bytes += len(data) - previous
            return stored

    async def exists(self, key: str) -> bool:
        """True when ``key`` is stored."""
        return check_key(key) in self._objects

    async def get(self, key: str) -> bytes:
        """The bytes under ``key``."""
        try:
            return self._objects[check_key(key)][0]
        except KeyError:
            raise ObjectNotFoundError(f"no object {key!r} in MemorySink") from None

    async def stat(self, key: str) -> StoredObject:
        """The description of the object under ``key``."""
        try:
            return self._objects[check_key(key)][1]
        except KeyError:
            raise ObjectNotFoundError(f"no object {key!r} in MemorySink") from None

    async def url(self, key: str, *, expires: float | timedelta = 3600) -> str:
        """The ``memory://`` URI of ``key`` (``expires`` is checked as S3Sink checks it; a
        memory URI does not expire)."""
        seconds(expires)
        return (await self.stat(key)).url

    async def delete(self, key: str) -> None:
        """Remove ``key`` if present."""
        async with self._lock:
            gone = self._objects.pop(check_key(key), None)
            if gone is not None:
                self._bytes -= len(gone[0])

    async def aclose(self) -> None:
        """Nothing to release."""
