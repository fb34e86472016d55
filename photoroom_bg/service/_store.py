"""Job records in the sink, and this host's claims on the jobs it runs.

A job is a few objects beside the cut-outs, so every replica sharing the sink can answer for
it and no database server is needed::

    jobs/<id>/job.json        the record: owner (a token hash), created, state, options,
                              image count, replica, progress snapshot, final report
    jobs/<id>/sources.json    the inputs (URLs and uploaded-image keys), for a resume
    jobs/<id>/manifest.jsonl  BatchRemover's manifest (``manifest_key``): one line per item
    jobs/<id>/cancel          present once a cancel was asked for
    uploads/<sha256>.<ext>    uploaded images, by content

On the local disk (``state_dir``), ``claims/<id>`` is locked (``flock``) by the process that
runs the job and ``manifests/<id>.jsonl`` is its manifest while it runs: the lock dies with the
process, so a restarted service (or another worker on the host) knows at once which jobs to
finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import attrs

from .. import _jsonsafe
from ..errors import ObjectNotFoundError
from ..sinks import Sink

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: claims are not exclusive
    fcntl = None  # type: ignore[assignment]

__all__ = ["JobRecord", "JobStore", "LocalClaims", "is_job_id"]

_JOB_ID = re.compile(r"[0-9a-f]{32}")
#: job states
RUNNING, COMPLETED, CANCELLED, FAILED = "running", "completed", "cancelled", "failed"
TERMINAL_STATES = frozenset({COMPLETED, CANCELLED, FAILED})


def is_job_id(text: str) -> bool:
    """True for the shape of a job id (32 hex digits): anything else is never a sink key."""
    return bool(_JOB_ID.fullmatch(text))


@attrs.define(kw_only=True)
class JobRecord:
    """What the service keeps about a job besides BatchRemover's manifest."""

    job_id: str
    owner: str
    created: float
    image_count: int
    options: dict[str, Any]
    state: str = RUNNING
    replica: str | None = None
    updated: float = attrs.field(factory=time.time)
    progress: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    executor: str = "local"

    @property
    def finished(self) -> bool:
        """True once the job is completed, cancelled or failed."""
        return self.state in TERMINAL_STATES

    @property
    def manifest_key(self) -> str:
        """Where BatchRemover keeps this job's manifest in the sink."""
        return f"jobs/{self.job_id}/manifest.jsonl"

    def to_json(self) -> bytes:
        """The stored form."""
        return json.dumps({"v": 1, **attrs.asdict(self)}, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> JobRecord:
        """Read a stored record (unknown members, from a newer version, are ignored)."""
        raw = json.loads(data)
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


class JobStore:
    """Reads and writes job records, source lists and manifests in the sink."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def __repr__(self) -> str:
        return f"JobStore({self.sink!r})"

    async def save(self, record: JobRecord) -> None:
        """Write the record (the last write wins)."""
        record.updated = time.time()
        await self.sink.put(
            f"jobs/{record.job_id}/job.json",
            record.to_json(),
            content_type="application/json",
            metadata={},
        )

    async def load(self, job_id: str) -> JobRecord | None:
        """The record, or ``None`` when there is no such job."""
        if not is_job_id(job_id):
            return None
        try:
            return JobRecord.from_json(await self.sink.get(f"jobs/{job_id}/job.json"))
        except ObjectNotFoundError:
            return None

    async def save_sources(self, job_id: str, sources: list[dict[str, str]]) -> None:
        """Keep the job's inputs so that any replica can resume it."""
        await self.sink.put(
            f"jobs/{job_id}/sources.json",
            json.dumps(sources).encode(),
            content_type="application/json",
            metadata={},
        )

    async def load_sources(self, job_id: str) -> list[dict[str, str]]:
        """The job's inputs."""
        return list(json.loads(await self.sink.get(f"jobs/{job_id}/sources.json")))

    async def request_cancel(self, job_id: str) -> None:
        """Leave the cancel marker the running replica looks for."""
        await self.sink.put(f"jobs/{job_id}/cancel", b"", metadata={})

    async def cancel_requested(self, job_id: str) -> bool:
        """True once a cancel was asked for, on any replica."""
        return await self.sink.exists(f"jobs/{job_id}/cancel")

    async def manifest_lines(self, record: JobRecord) -> list[str]:
        """The manifest lines stored in the sink (complete once the job has finished)."""
        try:
            data = await self.sink.get(record.manifest_key)
        except ObjectNotFoundError:
            return []
        return data.decode("utf-8", "replace").splitlines()


def job_lines(lines: list[str]) -> Iterator[dict[str, Any]]:
    """The job records among manifest lines (run headers and a torn last line skipped)."""
    for line in lines:
        try:
            record = _jsonsafe.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "index" in record and "status" in record:
            yield record


class LocalClaims:
    """This host's jobs: an exclusive ``flock`` per running job, released by the OS when
    the process ends, however it ends."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir)
        self.claims = self.root / "claims"
        self.manifests = self.root / "manifests"
        self._held: dict[str, IO[bytes]] = {}

    def __repr__(self) -> str:
        return f"LocalClaims({str(self.root)!r}, held={len(self._held)})"

    def prepare(self) -> None:
        """Create the folders."""
        self.claims.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)

    def manifest_path(self, job_id: str) -> Path:
        """The job's manifest while this host runs it."""
        return self.manifests / f"{job_id}.jsonl"

    def claim(self, job_id: str) -> bool:
        """Take the job's lock; ``False`` when another live process holds it."""
        if job_id in self._held:
            return False
        handle = open(self.claims / job_id, "a+b")  # noqa: SIM115 - held until release()
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                return False
        self._held[job_id] = handle
        return True

    def release(self, job_id: str, *, finished: bool) -> None:
        """Let go of a job; forget it on this host when it has finished."""
        handle = self._held.pop(job_id, None)
        if handle is None:
            return
        if finished:
            with contextlib.suppress(OSError):
                (self.claims / job_id).unlink()
            with contextlib.suppress(OSError):
                self.manifest_path(job_id).unlink()
        handle.close()

    def forget(self, job_id: str) -> None:
        """Remove a claim file left for a job that needs nothing more."""
        if self.claim(job_id):
            self.release(job_id, finished=True)

    def orphans(self) -> list[str]:
        """Jobs claimed on this host by a process that has gone (their lock is free)."""
        if not self.claims.is_dir():
            return []
        return sorted(
            p.name for p in self.claims.iterdir() if is_job_id(p.name) and p.name not in self._held
        )

    def read_manifest(self, job_id: str) -> list[str]:
        """The local manifest's lines (empty when this host has none)."""
        path = self.manifest_path(job_id)
        try:
            return path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return []

    def held(self) -> list[str]:
        """Jobs this process holds."""
        return list(self._held)

    async def aread_manifest(self, job_id: str) -> list[str]:
        """:meth:`read_manifest` off the event loop."""
        return await asyncio.to_thread(self.read_manifest, job_id)

    def read_manifest_from(self, job_id: str, offset: int) -> tuple[list[str], int]:
        """The whole lines the local manifest gained since byte ``offset``, and the offset
        after them (a line still being written is left for the next call)."""
        try:
            with open(self.manifest_path(job_id), "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except OSError:
            return [], offset
        end = data.rfind(b"\n") + 1
        text = data[:end].decode("utf-8", "replace")
        return text.splitlines(), offset + end
