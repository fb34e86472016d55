"""What the service hands back besides JSON: media types of outputs and ZIP archives."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import tempfile
import zipfile
from typing import Any

from fastapi import Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from ..batch import JobResult
from ..sinks import Sink
from ._problems import problem_for

__all__ = ["error_json", "ext", "job_archive", "media", "results_archive"]

MEDIA = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}


def ext(key: str | None) -> str:
    return (key or "").rsplit(".", 1)[-1].lower()


def media(key: str | None) -> str:
    return MEDIA.get(ext(key), "application/octet-stream")


def error_json(result: JobResult) -> dict[str, Any] | None:
    if result.error is not None:
        p = problem_for(result.error)
        return {"type": type(result.error).__name__, "code": p.code, "message": str(result.error)}
    if not result.ok:
        return {"type": None, "code": str(result.status.value), "message": result.reason}
    return None


def zip_name(position: int, name: str, key: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "image"
    return f"image_{position + 1}_{stem}.{ext(key)}"


async def results_archive(results: list[JobResult], urls: list[str], sink: Sink) -> Response:
    errors = []
    files: list[tuple[str, bytes]] = []
    for result in results:
        if result.ok and result.key:
            files.append(
                (zip_name(result.index, result.name, result.key), await sink.get(result.key))
            )
        else:
            errors.append(
                {
                    "index": result.index,
                    "url": urls[result.index],
                    "status": result.status.value,
                    "error": error_json(result),
                }
            )

    def build() -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
            for name, data in files:
                archive.writestr(name, data)
            archive.writestr("errors.json", json.dumps(errors, indent=2))
        return out.getvalue()

    data = await asyncio.to_thread(build)
    return Response(
        data,
        media_type="application/zip",
        headers={
            "Content-Disposition": 'attachment; filename="background_removed_images.zip"',
            "X-Success-Count": str(len(files)),
            "X-Failed-Count": str(len(errors)),
        },
    )


async def job_archive(sink: Sink, job_id: str, items: list[dict[str, Any]]) -> Response:
    fd, path = tempfile.mkstemp(prefix="photoroom-bg-", suffix=".zip")
    os.close(fd)
    archive = await asyncio.to_thread(zipfile.ZipFile, path, "w", zipfile.ZIP_STORED)
    errors = []
    try:
        for item in items:
            if item.get("stored"):
                data = await sink.get(item["key"])
                name = zip_name(item["index"], str(item.get("name") or "image"), item["key"])
                await asyncio.to_thread(archive.writestr, name, data)
            elif item["status"] not in ("pending", "running"):
                errors.append(
                    {k: item.get(k) for k in ("index", "source", "status", "error", "reason")}
                )
        await asyncio.to_thread(archive.writestr, "errors.json", json.dumps(errors, indent=2))
    except BaseException:
        archive.close()
        os.unlink(path)
        raise
    await asyncio.to_thread(archive.close)
    return FileResponse(
        path,
        media_type="application/zip",
        filename=f"cutouts-{job_id[:8]}.zip",
        background=BackgroundTask(os.unlink, path),
    )
