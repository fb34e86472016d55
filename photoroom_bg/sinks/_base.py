"""The :class:`Sink` protocol and :class:`StoredObject`: where cut-outs go."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Protocol, runtime_checkable

import attrs

__all__ = ["Sink", "StoredObject"]


@attrs.frozen
class StoredObject:
    """An object stored by a sink.

    Attributes:
        key: the key inside the sink (relative to its root or prefix).
        size: size in bytes.
        content_type: MIME type.
        checksum: an ETag or ``sha256:<hex>`` digest of the content.
        uri: the canonical location (``s3://bucket/key``, ``file:///...``, ``memory://key``).
        url: a URL that fetches the object (presigned for S3).
        metadata: user metadata stored with the object.
    """

    key: str
    size: int
    content_type: str
    checksum: str
    uri: str
    url: str
    metadata: Mapping[str, str] = attrs.field(factory=dict)


@runtime_checkable
class Sink(Protocol):
    """An async object store for cut-outs. Implementations: memory, filesystem, S3."""

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Store ``data`` under ``key``, replacing any previous object; return its description."""
        ...

    async def exists(self, key: str) -> bool:
        """True when an object is stored under ``key``."""
        ...

    async def get(self, key: str) -> bytes:
        """Return the bytes under ``key``; raise ``ObjectNotFoundError`` if there are none."""
        ...

    async def url(self, key: str, *, expires: float | timedelta = 3600) -> str:
        """Return a URL that fetches ``key``, valid for ``expires`` where the backend signs URLs."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        ...

    async def aclose(self) -> None:
        """Release the sink's resources (connections, clients)."""
        ...
