"""What the service hands back besides JSON: media types of outputs and ZIP archives."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import tempfile
import zipfile
from typing import Any

from fastapi import Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from ..errors import ObjectNotFoundError, StorageError, StorageFullError
from ..sinks import Sink
from ..sinks._common import DISK_FULL

__all__ = ["archive", "ext", "media", "temporary_folder_error", "zip_name"]

MEDIA = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}


def ext(key: str | None) -> str:
    """An output key's extension (``png``, ``jpg``...)."""
    return (key or "").rsplit(".", 1)[-1].lower()


def media(key: str | None) -> str:
    """An output key's media type."""
    return MEDIA.get(ext(key), "application/octet-stream")


#: ``errors.json``'s error for an item whose stored cut-out is no longer in the sink.
MISSING_OUTPUT = {
    "type": "ObjectNotFoundError",
    "code": "output_not_found",
    "message": "its cut-out is no longer in the storage (deleted or expired since it was stored)",
}


def _error_fields(item: dict[str, Any]) -> dict[str, Any]:
    return {k: item.get(k) for k in ("index", "source", "status", "error", "reason")}


def zip_name(position: int, name: str, key: str) -> str:
    """The original service's archive names: ``image_<n>_<name>.<ext>``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "image"
    return f"image_{position + 1}_{stem}.{ext(key)}"


async def archive(sink: Sink, items: list[dict[str, Any]], *, filename: str) -> Response:
    """The stored outputs among ``items`` as a ZIP, with ``errors.json`` listing every item
    that finished without one (or whose output has left the sink since); written to a
    temporary file, one output in memory at a time.

    Raises:
        StorageFullError: the temporary folder is full (the caller is told the storage is
            full; the log names the folder).
        StorageError: it cannot be written.
    """
    try:
        fd, path = tempfile.mkstemp(prefix="photoroom-bg-", suffix=".zip")
    except OSError as exc:
        raise temporary_folder_error(exc, "the ZIP") from None
    os.close(fd)
    zipped: zipfile.ZipFile | None = None
    errors = []
    stored = 0
    try:
        zipped = await asyncio.to_thread(zipfile.ZipFile, path, "w", zipfile.ZIP_STORED)
        for item in items:
            if item.get("stored"):
                try:
                    data = await sink.get(item["key"])
                except ObjectNotFoundError:  # deleted or expired since: the rest still goes
                    errors.append({**_error_fields(item), "error": MISSING_OUTPUT})
                    continue
                name = zip_name(item["index"], str(item.get("name") or "image"), item["key"])
                await asyncio.to_thread(zipped.writestr, name, data)
                stored += 1
            elif item["status"] not in ("pending", "running"):
                errors.append(_error_fields(item))
        await asyncio.to_thread(zipped.writestr, "errors.json", json.dumps(errors, indent=2))
        await asyncio.to_thread(zipped.close)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # full: its last writes fail again
            if zipped is not None:
                zipped.close()
        os.unlink(path)
        if isinstance(exc, OSError):
            raise temporary_folder_error(exc, "the ZIP") from None
        raise
    return FileResponse(
        path,
        media_type="application/zip",
        filename=filename,
        headers={"X-Success-Count": str(stored), "X-Failed-Count": str(len(errors))},
        background=BackgroundTask(os.unlink, path),
    )


def temporary_folder_error(exc: OSError, what: str) -> StorageError:
    """The typed error of ``what`` (a ZIP, an upload) that could not be written where
    temporary files go: the caller is told the service's storage failed or is full, and the
    log names the folder."""
    where = f"{what} in the temporary folder {tempfile.gettempdir()}"
    reason = exc.strerror or str(exc)
    if exc.errno in DISK_FULL:
        return StorageFullError(f"no space left to write {where} ({reason}): make room there")
    return StorageError(f"cannot write {where}: {reason}")
