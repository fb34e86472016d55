"""The manifest: one JSON line per finished job, flushed and fsynced as jobs finish."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ._jobs import JobResult, JobStatus

__all__ = [
    "Manifest",
    "finished_keys_in",
    "job_fields",
    "load_finished_keys",
    "load_sources",
    "replayable_sources",
]

VERSION = 1


def job_fields(result: JobResult) -> dict[str, Any]:
    """A job as JSON-ready fields: what manifests record and ``photoroom-bg --json`` prints."""
    return {
        "index": result.index,
        "source": result.source,
        "name": result.name,
        "status": result.status.value,
        "key": result.key,
        "uri": result.output.uri if result.output else None,
        "error_type": result.error_type,
        "error": result.error.message if result.error else None,
        "reason": result.reason,
        "attempts": result.attempts,
        "billed": result.billed,
        "duration": round(result.duration, 4),
        "input_size": result.input_size,
        "output_size": result.output_size,
    }


def _record(result: JobResult, engine: str, options_digest: str) -> dict[str, Any]:
    return {
        "v": VERSION,
        "time": round(time.time(), 3),
        **job_fields(result),
        "engine": engine,
        "options_digest": options_digest,
    }


class Manifest:
    """Appends job records to a JSON-lines file; a crash loses at most the jobs in flight.

    Records hold the source without query string or credentials, the output key and URI,
    the status, the error type and message: never an API key or storage secret.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handle: IO[str] | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"Manifest({str(self.path)!r})"

    def _append(self, line: str) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        self._handle.write(line + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    async def write_header(
        self, sources: list[str] | None, *, engine: str, options_digest: str
    ) -> None:
        """Append a record of the run itself: its re-creatable sources (or ``None``)."""
        record = {
            "v": VERSION,
            "type": "run",
            "time": round(time.time(), 3),
            "sources": sources,
            "engine": engine,
            "options_digest": options_digest,
        }
        line = json.dumps(record, ensure_ascii=False)
        async with self._lock:
            await asyncio.to_thread(self._append, line)

    async def write(self, result: JobResult, *, engine: str, options_digest: str) -> None:
        """Append one record (off the event loop)."""
        line = json.dumps(_record(result, engine, options_digest), ensure_ascii=False)
        async with self._lock:
            await asyncio.to_thread(self._append, line)

    def close(self) -> None:
        """Close the file."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def load_finished_keys(path: str | os.PathLike[str]) -> set[str]:
    """Output keys a manifest records as stored (``succeeded`` or ``skipped``).

    A torn last line (a crash mid-write) is ignored.
    """
    target = Path(path)
    if not target.exists():
        return set()
    with target.open(encoding="utf-8") as handle:
        return finished_keys_in(handle)


def finished_keys_in(lines: Iterable[str]) -> set[str]:
    """:func:`load_finished_keys` for manifest lines already in hand (e.g. from a sink)."""
    finished: set[str] = set()
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        ok = record.get("status") in (JobStatus.SUCCEEDED.value, JobStatus.SKIPPED.value)
        if ok and record.get("key"):
            finished.add(str(record["key"]))
    return finished


def replayable_sources(spec: object) -> list[str] | None:
    """The sources as strings a later run can open again, or ``None`` when they cannot be
    recorded: bytes, file objects, generators, or URLs carrying credentials or a query
    string (a presigned URL's signature must never reach the manifest)."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else spec
    if not isinstance(items, (list, tuple)):
        return None
    out: list[str] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            return None
        text = os.fspath(item)
        if "://" in text:
            parts = urlsplit(text)
            if parts.query or parts.username or parts.password or parts.fragment:
                return None
        elif text == "-":
            return None
        else:
            text = str(Path(text).resolve())
        out.append(text)
    return out


def load_sources(path: str | os.PathLike[str]) -> list[str]:
    """The sources the latest run recorded in a manifest, for :meth:`BatchRemover.resume`.

    Raises:
        ConfigurationError: no such manifest, or its run's sources could not be recorded
            (bytes, file objects, generators, signed URLs): pass them to ``resume`` again.
    """
    target = Path(path)
    if not target.exists():
        raise ConfigurationError(f"no manifest at {target}")
    sources: list[str] | None = None
    seen_run = False
    with target.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("type") == "run":
                seen_run = True
                sources = record.get("sources")
    if not seen_run or sources is None:
        raise ConfigurationError(
            f"{target} does not record re-openable sources (bytes, file objects, generators "
            "or signed URLs are never written to it): pass the sources to resume() again"
        )
    return [str(item) for item in sources]
