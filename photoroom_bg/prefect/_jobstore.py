"""A job's records in its sink: the one place every worker, the flow and a service can all reach.

Under ``_photoroom_bg/jobs/<job id>/`` in the sink::

    parameters.json             the job's parameters (references only), for resuming it
    job.json                    the job: its flow run, state, running totals, and its summary
                                once done
    control.json                the current attempt, and a stop request (402, 401/403, cancel)
    shards/000012.json          shard 12: its lease, state, heartbeat, progress, summary
    shards/000012.manifest.jsonl  shard 12's BatchRemover manifest: one line per input

The sink is already shared by every worker (they store the outputs there), so keeping a job's
coordination beside its outputs needs no extra service, and works the same on S3 or a shared
folder. Records are small JSON objects written whole; each has one writer at a time, except
``control.json`` whose only change after the start is a stop request (first reason wins).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Literal

import attrs

from .. import _jsonsafe
from ..errors import ObjectNotFoundError, ValidationError
from ..sinks import Sink

__all__ = ["JOBS_PREFIX", "Control", "JobStore", "check_job_id"]

JOBS_PREFIX = "_photoroom_bg/jobs"
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
StopKind = Literal["stopped", "cancelled"]


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it is safe as a key segment (letters, digits, ``_.-``; <= 128).

    Raises:
        ValidationError: it is not.
    """
    if not isinstance(job_id, str) or not _JOB_ID.match(job_id) or ".." in job_id:
        raise ValidationError(
            f"job id {job_id!r} must be 1-128 letters, digits, '_', '.' or '-', starting "
            "with a letter or digit"
        )
    return job_id


@attrs.frozen
class Control:
    """A job's control record.

    Attributes:
        attempt: the current attempt (flow run id and run count): shards of an older attempt
            that start late see they are stale and end without calling Photoroom.
        stop: why the job must stop, or ``None``.
        kind: ``"stopped"`` (a shard met a 402, 401/403 or lost storage) or ``"cancelled"``.
        run: the flow run a cancel was aimed at, when it was asked for before that run began
            (a new attempt clears any other stop request).
    """

    attempt: str | None = None
    stop: str | None = None
    kind: StopKind | None = None
    run: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"attempt": self.attempt, "stop": self.stop, "kind": self.kind, "run": self.run}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Control:
        """The inverse of :meth:`to_dict` (``None``: a job with no control record yet)."""
        data = data or {}
        kind = data.get("kind")
        return cls(
            attempt=data.get("attempt"),
            stop=data.get("stop"),
            kind=kind if kind in ("stopped", "cancelled") else None,
            run=data.get("run"),
        )


class JobStore:
    """Reads and writes one job's records in a sink (see the module docs for the layout).

    Args:
        sink: the job's sink (the one its outputs go to).
        job_id: the job (checked with :func:`check_job_id`).
    """

    def __init__(self, sink: Sink, job_id: str) -> None:
        self.sink = sink
        self.job_id = check_job_id(job_id)
        self.prefix = f"{JOBS_PREFIX}/{job_id}"

    def __repr__(self) -> str:
        return f"JobStore({self.sink!r}, {self.job_id!r})"

    @property
    def job_key(self) -> str:
        """Key of ``job.json``."""
        return f"{self.prefix}/job.json"

    @property
    def parameters_key(self) -> str:
        """Key of ``parameters.json``."""
        return f"{self.prefix}/parameters.json"

    @property
    def control_key(self) -> str:
        """Key of ``control.json``."""
        return f"{self.prefix}/control.json"

    def shard_key(self, shard: int) -> str:
        """Key of a shard's record."""
        return f"{self.prefix}/shards/{shard:06d}.json"

    def manifest_key(self, shard: int) -> str:
        """Key of a shard's manifest (what ``BatchRemover(manifest_key=...)`` keeps)."""
        return f"{self.prefix}/shards/{shard:06d}.manifest.jsonl"

    async def read(self, key: str) -> dict[str, Any] | None:
        """The JSON object under ``key``, or ``None`` if there is none (or it is torn)."""
        try:
            data = await self.sink.get(key)
        except ObjectNotFoundError:
            return None
        try:
            value = _jsonsafe.loads(data)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    async def write(self, key: str, record: dict[str, Any]) -> None:
        """Store ``record`` as JSON under ``key`` (replacing it)."""
        # a file name that is not UTF-8 (a shard's paths, listed on a worker) keeps its
        # \udcxx escapes: it reads back as it was
        body = json.dumps(record, ensure_ascii=False, sort_keys=True).encode(
            "utf-8", "backslashreplace"
        )
        await self.sink.put(key, body, content_type="application/json", metadata={})

    async def control(self) -> Control:
        """The job's control record."""
        return Control.from_dict(await self.read(self.control_key))

    async def start_attempt(self, attempt: str, flow_run_id: str | None = None) -> Control:
        """Begin a new attempt: shards of older attempts become stale, and an earlier stop
        request is cleared (a re-run after topping up credits, or after a cancel, goes on),
        unless it was a cancel aimed at this very flow run before it began."""
        current = await self.control()
        if current.stop is not None and flow_run_id is not None and current.run == flow_run_id:
            control = attrs.evolve(current, attempt=attempt)
        else:
            control = Control(attempt=attempt)
        await self.write(self.control_key, control.to_dict())
        return control

    async def request_stop(self, reason: str, kind: StopKind, *, run: str | None = None) -> Control:
        """Ask every shard of the job to stop; an earlier stop request keeps its reason.

        Args:
            reason: why (it becomes the job's stop reason).
            kind: ``"stopped"`` or ``"cancelled"``.
            run: the flow run the request is aimed at, so that it holds even if that run has
                not begun yet.
        """
        current = await self.control()
        if current.stop is not None:
            return current
        control = attrs.evolve(current, stop=reason, kind=kind, run=run)
        await self.write(self.control_key, control.to_dict())
        return control

    async def read_shard(self, shard: int) -> dict[str, Any] | None:
        """A shard's record, or ``None``."""
        return await self.read(self.shard_key(shard))

    async def write_shard(self, shard: int, record: dict[str, Any]) -> None:
        """Replace a shard's record (``updated`` is set to the wall clock)."""
        await self.write(self.shard_key(shard), {**record, "shard": shard, "updated": time.time()})

    async def read_manifest(self, shard: int) -> list[dict[str, Any]]:
        """The job records of a shard's manifest (run headers and torn lines left out)."""
        try:
            data = await self.sink.get(self.manifest_key(shard))
        except ObjectNotFoundError:
            return []
        records = []
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                record = _jsonsafe.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "status" in record:
                records.append(record)
        return records
