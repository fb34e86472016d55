"""FileSystemSink: atomic writes under a root folder."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import mimetypes
import os
import secrets
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from ..errors import ObjectNotFoundError, StorageError, StorageFullError, UnsafeKeyError
from ._base import StoredObject
from ._common import check_key, sha256_checksum

__all__ = ["FileSystemSink"]

_META_SUFFIX = ".meta.json"


class FileSystemSink:
    """Stores objects as files under ``root``.

    Writes are atomic: the bytes go to a temporary file in the same folder, are fsynced, then
    renamed over the final name, so a crash never leaves a half-written image under a real
    key. Folders are created as needed. Keys that would leave ``root`` (``..``, absolute
    paths, NUL bytes, backslashes, symlinks pointing outside) are refused with
    :class:`~photoroom_bg.errors.UnsafeKeyError`. A full disk raises
    :class:`~photoroom_bg.errors.StorageFullError` and leaves no temporary file behind.

    Args:
        root: the folder (created if missing).
        write_metadata: also store content type and metadata in a ``<key>.meta.json`` file.
    """

    def __init__(self, root: str | os.PathLike[str], *, write_metadata: bool = False) -> None:
        self.root = Path(root).expanduser().resolve()
        self.write_metadata = write_metadata

    def __repr__(self) -> str:
        return f"FileSystemSink({str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The file that holds ``key``; refuses keys that escape the root."""
        check_key(key)
        if key.endswith(_META_SUFFIX):
            raise UnsafeKeyError(f"key {key!r} uses the reserved suffix {_META_SUFFIX}")
        target = (self.root / key).resolve()
        if not target.is_relative_to(self.root):
            raise UnsafeKeyError(f"key {key!r} resolves outside {self.root}")
        return target

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Write ``data`` to ``root/key`` atomically (replacing any previous file)."""
        target = self.path(key)
        meta = dict(metadata or {})
        await asyncio.to_thread(self._write, target, data, content_type, meta)
        return self._describe(key, target, len(data), content_type, sha256_checksum(data), meta)

    def _write(self, target: Path, data: bytes, content_type: str, meta: dict[str, str]) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._atomic_write(target, data)
            if self.write_metadata:
                sidecar = {"content_type": content_type, "metadata": meta}
                self._atomic_write(
                    target.with_name(target.name + _META_SUFFIX), json.dumps(sidecar).encode()
                )
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise StorageFullError(
                    f"no space left to write {target.name} under {self.root}"
                ) from None
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from None

    @staticmethod
    def _atomic_write(target: Path, data: bytes) -> None:
        # Not mkstemp: its files are 0600. Created like open() would, so the umask decides
        # who may read the cut-outs (0644 under the usual umask).
        temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        fd = os.open(temp, flags, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    def _describe(
        self,
        key: str,
        target: Path,
        size: int,
        content_type: str,
        checksum: str,
        meta: Mapping[str, str],
    ) -> StoredObject:
        uri = target.as_uri()
        return StoredObject(
            key=key,
            size=size,
            content_type=content_type,
            checksum=checksum,
            uri=uri,
            url=uri,
            metadata=dict(meta),
        )

    async def exists(self, key: str) -> bool:
        """True when ``root/key`` is a file."""
        return await asyncio.to_thread(self.path(key).is_file)

    async def get(self, key: str) -> bytes:
        """The bytes of ``root/key``."""
        target = self.path(key)
        try:
            return await asyncio.to_thread(target.read_bytes)
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFoundError(f"no object {key!r} under {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {target}: {exc.strerror or exc}") from None

    async def stat(self, key: str) -> StoredObject:
        """Describe ``root/key`` (checksum computed from the file)."""
        target = self.path(key)
        data = await self.get(key)
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        meta: dict[str, str] = {}
        sidecar = target.with_name(target.name + _META_SUFFIX)
        if await asyncio.to_thread(sidecar.is_file):
            stored = json.loads(await asyncio.to_thread(sidecar.read_bytes))
            content_type = stored.get("content_type", content_type)
            meta = stored.get("metadata", {})
        return self._describe(key, target, len(data), content_type, sha256_checksum(data), meta)

    async def url(self, key: str, *, expires: float | timedelta = 3600) -> str:
        """The ``file://`` URI of ``root/key`` (``expires`` does not apply)."""
        target = self.path(key)
        if not await asyncio.to_thread(target.is_file):
            raise ObjectNotFoundError(f"no object {key!r} under {self.root}")
        return target.as_uri()

    async def delete(self, key: str) -> None:
        """Remove ``root/key`` (and its metadata file) if present."""
        target = self.path(key)
        for path in (target, target.with_name(target.name + _META_SUFFIX)):
            await asyncio.to_thread(path.unlink, missing_ok=True)

    async def aclose(self) -> None:
        """Nothing to release."""
