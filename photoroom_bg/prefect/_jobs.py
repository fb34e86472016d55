"""PrefectJobs: jobs as Prefect flow runs, for a service (start, status, results, cancel).

A web service validates a request and hands it here; the work runs on Prefect task workers.
A job is a ``remove_backgrounds`` flow run whose shards are deferred to ``prefect task serve``
workers. The flow run itself runs either in this process (the service's event loop; it only
coordinates) or, with ``deployment=``, wherever that deployment is served. Status is read
from the job's records and shard manifests in its sink and from Prefect's states, never from
a second store of jobs.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.abc
import attrs

from .._numbers import check_flag, check_number
from ..batch._manifest import latest_records
from ..errors import ConfigurationError, ObjectNotFoundError, PhotoroomBGError
from ..options import EditOptions, SegmentOptions
from ..sinks import Sink
from ._environment import open_worker_sink
from ._flow import remove_backgrounds
from ._jobstore import JobStore, check_job_id
from ._options import options_to_dict
from ._parameters import JobParameters
from ._summary import RunSummary

__all__ = ["JobInfo", "JobState", "PrefectJobs"]

#: Where a job stands. ``crashed``: its flow run stopped without finishing (the process that
#: ran it died); :meth:`PrefectJobs.resume` finishes it.
JobState = Literal["scheduled", "running", "completed", "failed", "cancelled", "crashed"]
_FINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled", "crashed"})
_FINAL_PREFECT = frozenset({None, "COMPLETED", "FAILED", "CANCELLED", "CRASHED"})
# a coordinator writes the job record at least every few seconds; this many heartbeat
# timeouts without a write and a flow run Prefect still calls running is taken for dead
_STALE_FACTOR = 3


@attrs.frozen
class JobInfo:
    """A job's status.

    Attributes:
        job_id: the job.
        state: ``scheduled``, ``running``, ``completed``, ``failed``, ``cancelled`` or
            ``crashed`` (its flow run stopped without finishing: the process running it
            died; :meth:`PrefectJobs.resume` finishes the job).
        flow_run_id: its Prefect flow run (``None`` before it exists).
        flow_run_state: the flow run's Prefect state type (``"SCHEDULED"``, ``"RUNNING"``,
            ``"COMPLETED"``, ``"FAILED"``, ``"CANCELLED"``, ``"CRASHED"``...).
        counts: inputs of finished shards per status (``total_count``, ``stored_count``,
            ``failed_count``...); the final totals once the job is done.
        shards_dispatched: shards handed out so far.
        shards_running: shards in flight.
        stop_reason: why the job stopped early (402, 401/403, cancelled...), if it did.
        summary: the :class:`RunSummary`, once the job is done.
    """

    job_id: str
    state: JobState
    flow_run_id: str | None = None
    flow_run_state: str | None = None
    counts: Mapping[str, int] = attrs.field(factory=dict)
    shards_dispatched: int = 0
    shards_running: int = 0
    stop_reason: str | None = None
    summary: RunSummary | None = None

    @property
    def done(self) -> bool:
        """True once the job will change no more (until it is resumed)."""
        return self.state in _FINAL


class PrefectJobs:
    """Start, watch and cancel background-removal jobs that run on Prefect.

    Use it as an async context manager: flow runs it coordinates in this process belong to
    it, and are stopped (their shards asked to stop) when the block exits::

        async with PrefectJobs("s3://cutouts/jobs", api_key_secret="photoroom-key") as jobs:
            job = await jobs.start(["s3://raw/a.jpg", "s3://raw/b.jpg"])
            info = await jobs.status(job.job_id)

    Args:
        sink: where outputs (and the jobs' records) go, unless a job names another.
        deferred: send shards to ``prefect task serve`` workers (default); ``False`` runs
            them in the coordinating process's task runner.
        deployment: run each job's flow as a run of this deployment
            (``"remove-backgrounds/<name>"``) instead of in this process.
        **defaults: default job parameters (``shard_size``, ``concurrency``, ``engine``,
            ``api_key_secret``, ``requests_per_minute``, ``rate_limit``,
            ``max_running_shards``, ``heartbeat_timeout``, ``max_failures``,
            ``max_retries``, ``retry_backoff``, ``retry_possibly_billed``, ``max_source_bytes``,
            ``call_timeout``).
    """

    def __init__(
        self,
        sink: str,
        *,
        deferred: bool = True,
        deployment: str | None = None,
        **defaults: Any,
    ) -> None:
        unknown = set(defaults) - {f.name for f in attrs.fields(JobParameters)}
        if unknown or {"sources", "sink", "options", "job_id", "deferred"} & defaults.keys():
            raise ConfigurationError(f"not a default job parameter: {sorted(defaults)}")
        self.sink = sink
        self.deferred = check_flag("deferred", deferred)
        self.deployment = deployment
        self.defaults = defaults
        self._group: anyio.abc.TaskGroup | None = None
        self._local: dict[str, tuple[anyio.Event, str]] = {}  # job id: (ended, sink)

    def __repr__(self) -> str:
        return (
            f"PrefectJobs(sink={self.sink!r}, deferred={self.deferred}, "
            f"deployment={self.deployment!r})"
        )

    async def __aenter__(self) -> PrefectJobs:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._group is not None
        # jobs coordinated here cannot outlive this block: ask them to stop (their shards
        # finish the images in hand), then wait for their flow runs to end cleanly
        for job_id, (ended, sink) in list(self._local.items()):
            if not ended.is_set():
                with contextlib.suppress(PhotoroomBGError):
                    async with self._store(job_id, sink) as store:
                        await store.request_stop(
                            "the process running this job stopped", "cancelled"
                        )
        if exc_type is not None:
            self._group.cancel_scope.cancel()
        try:
            return await self._group.__aexit__(exc_type, exc, tb)
        finally:
            self._group = None

    # -- starting ------------------------------------------------------------------------------

    async def start(
        self,
        sources: Sequence[str],
        options: SegmentOptions | EditOptions | Mapping[str, Any] | None = None,
        *,
        sink: str | None = None,
        job_id: str | None = None,
        **overrides: Any,
    ) -> JobInfo:
        """Start a job over ``sources`` (references: URLs, ``s3://`` URIs, paths; one may be
        given alone, as a str or a path).

        Returns at once, with the job ``scheduled``. Parameters are validated first: a bad
        option, sink or engine raises here and nothing is created.

        Raises:
            ConfigurationError, ValidationError: bad parameters.
            ConfigurationError: ``job_id`` names a job that is still running.
        """
        params = JobParameters(
            **{
                **self.defaults,
                **overrides,
                # one reference as a str (a Sequence[str] too): not one per character
                "sources": [os.fspath(sources)]
                if isinstance(sources, (str, os.PathLike))
                else [str(s) for s in sources],
                "sink": sink or self.sink,
                "options": options_to_dict(options),
                "job_id": check_job_id(job_id) if job_id else uuid.uuid4().hex,
                "deferred": self.deferred,
            }
        )
        return await self._start(params)

    async def resume(self, job_id: str, *, sink: str | None = None) -> JobInfo:
        """Run a job again with its recorded parameters: stored outputs are skipped (never
        paid for twice); failed, cancelled and unprocessed inputs are tried again.

        Raises:
            ObjectNotFoundError: no such job in the sink.
            ConfigurationError: the job is still running.
        """
        async with self._store(job_id, sink) as store:
            await self._record(store)
            params = await store.read(store.parameters_key) or {}
        params["job_id"] = job_id
        return await self._start(JobParameters(**params))

    async def _start(self, params: JobParameters) -> JobInfo:
        from prefect.client.orchestration import get_client

        assert params.job_id is not None
        job_id = params.job_id
        async with self._store(job_id, params.sink) as store:
            existing = await store.read(store.job_key)
            if existing is not None:
                info = await self._info(store, existing)
                if not info.done:
                    raise ConfigurationError(f"job {job_id} is {info.state}; cancel it first")
            await store.write(store.parameters_key, params.flow_parameters())
            record: dict[str, Any] = {
                "job_id": job_id,
                "state": "scheduled",
                "flow_run_id": None,
                "updated": time.time(),
                "heartbeat_timeout": params.heartbeat_timeout,
            }
            await store.write(store.job_key, record)
            if self.deployment is not None:
                from prefect.deployments import arun_deployment

                flow_run = await arun_deployment(
                    self.deployment,
                    parameters=params.flow_parameters(),
                    timeout=0,
                    idempotency_key=f"{job_id}:{uuid.uuid4().hex}",
                    as_subflow=False,
                )
            else:
                if self._group is None:
                    raise ConfigurationError(
                        "PrefectJobs runs local flows inside 'async with PrefectJobs(...)'"
                    )
                async with get_client() as client:
                    flow_run = await client.create_flow_run(
                        remove_backgrounds, parameters=params.flow_parameters()
                    )
                done = anyio.Event()
                self._local[job_id] = (done, params.sink)
                self._group.start_soon(self._run_local, flow_run, params, done)
            record["flow_run_id"] = str(flow_run.id)
            await store.write(store.job_key, record)
        return JobInfo(job_id=job_id, state="scheduled", flow_run_id=str(flow_run.id))

    async def _run_local(self, flow_run: Any, params: JobParameters, done: anyio.Event) -> None:
        from prefect.flow_engine import run_flow_async

        try:
            await run_flow_async(
                remove_backgrounds,
                flow_run=flow_run,
                parameters=params.flow_parameters(),
                return_type="state",
            )
        finally:
            done.set()

    # -- reading -------------------------------------------------------------------------------

    async def status(self, job_id: str, *, sink: str | None = None) -> JobInfo:
        """The job's status, from its record in the sink and its flow run's Prefect state.

        A job whose flow run stopped coordinating without finishing (its process died while
        Prefect still shows it running) is reported ``crashed``, and its flow run is marked
        ``Crashed`` in Prefect, so it never looks like it is still running.

        Raises:
            ObjectNotFoundError: no such job in the sink.
        """
        async with self._job(job_id, sink) as (_, _, info):
            return info

    async def wait(
        self,
        job_id: str,
        *,
        sink: str | None = None,
        interval: float = 0.5,
    ) -> JobInfo:
        """Poll :meth:`status` every ``interval`` seconds until the job is done and its flow
        run has ended (bound the wait with ``anyio.fail_after`` / ``asyncio.timeout``).

        Raises:
            ConfigurationError: ``interval`` is not a positive, finite number of seconds.
        """
        # 0, a negative number or NaN polled with no pause at all; inf never polled again
        check_number("interval", interval, positive=True, finite=True)
        done_at: float | None = None
        while True:
            info = await self.status(job_id, sink=sink)
            if info.done:
                done_at = done_at if done_at is not None else time.monotonic()
                # the flow run ends just after it records the job's summary
                if info.flow_run_state in _FINAL_PREFECT or time.monotonic() - done_at > 30:
                    return info
            await anyio.sleep(interval)

    async def results(
        self, job_id: str, *, sink: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the job's per-input records, shard by shard, from its manifests in the sink:
        ``source``, ``status`` (``succeeded``, ``skipped``, ``failed``, ``cancelled``),
        ``key``, ``uri``, ``error_type``, ``error``... (the fields of a manifest line).
        One per input, its current one: after a resume, an input that failed and was then
        made is ``succeeded``. Inputs of shards still running appear when their shard ends."""
        async with self._store(job_id, sink) as store:
            record = await self._record(store)
            for shard in range(int(record.get("shards_dispatched") or 0)):
                latest = latest_records(await store.read_manifest(shard))
                for index in sorted(latest):
                    yield latest[index]

    async def cancel(
        self, job_id: str, reason: str = "cancelled", *, sink: str | None = None
    ) -> bool:
        """Ask the job to stop: no new shard starts, shards not started end without calling
        Photoroom, running ones stop after the images they are processing (nothing paid for
        is lost). Returns ``False`` when the job had already ended.

        Raises:
            ObjectNotFoundError: no such job in the sink.
        """
        async with self._job(job_id, sink) as (store, _, info):
            if info.done:
                return False
            await store.request_stop(reason, "cancelled", run=info.flow_run_id)
            if info.state == "scheduled" and info.flow_run_id and self.deployment is not None:
                await self._set_flow_run_state(info.flow_run_id, "cancelled", reason)
            return True

    async def mark_crashed(self, job_id: str, reason: str, *, sink: str | None = None) -> JobInfo:
        """Declare that nothing coordinates the job any more (the caller knows its process
        died, e.g. it held the job's lock): its flow run becomes ``Crashed`` at once instead
        of after the heartbeat timeouts :meth:`status` waits for, so :meth:`resume` may run it
        again. A job that has already ended is left as it is.

        Raises:
            ObjectNotFoundError: no such job in the sink.
        """
        async with self._job(job_id, sink) as (store, record, info):
            if info.done:
                return info
            if info.flow_run_id:
                await self._set_flow_run_state(info.flow_run_id, "crashed", reason)
            return await self._info(store, record)

    # -- helpers -------------------------------------------------------------------------------

    def _store(self, job_id: str, sink: str | None) -> _OpenStore:
        return _OpenStore(open_worker_sink(sink or self.sink), check_job_id(job_id))

    @contextlib.asynccontextmanager
    async def _job(
        self, job_id: str, sink: str | None
    ) -> AsyncIterator[tuple[JobStore, dict[str, Any], JobInfo]]:
        """The job's store (open while in the block), its record and its status."""
        async with self._store(job_id, sink) as store:
            record = await self._record(store)
            yield store, record, await self._info(store, record)

    @staticmethod
    async def _record(store: JobStore) -> dict[str, Any]:
        record = await store.read(store.job_key)
        if record is None:
            raise ObjectNotFoundError(f"no job {store.job_id!r} in this sink")
        return record

    async def _info(self, store: JobStore, record: Mapping[str, Any]) -> JobInfo:
        flow_run_id = record.get("flow_run_id")
        prefect_state = await self._flow_run_state(flow_run_id) if flow_run_id else None
        summary = RunSummary.from_dict(record["summary"]) if record.get("summary") else None
        state: JobState
        if summary is not None:
            state = summary.state
        elif prefect_state is not None and prefect_state.is_final():
            state = _from_prefect(prefect_state.type.value)
        else:
            state = "running" if record.get("state") == "running" else "scheduled"
            if state == "running" and self._coordinator_gone(store.job_id, record):
                state = "crashed"
                await self._set_flow_run_state(
                    str(flow_run_id), "crashed", "the process coordinating this job stopped"
                )
        return JobInfo(
            job_id=store.job_id,
            state=state,
            flow_run_id=flow_run_id,
            flow_run_state=prefect_state.type.value if prefect_state is not None else None,
            counts=dict(summary.counts if summary else record.get("counts") or {}),
            shards_dispatched=int(record.get("shards_dispatched") or 0),
            shards_running=0 if summary else int(record.get("shards_running") or 0),
            stop_reason=summary.stop_reason if summary else record.get("stop_reason"),
            summary=summary,
        )

    def _coordinator_gone(self, job_id: str, record: Mapping[str, Any]) -> bool:
        local = self._local.get(job_id)
        if local is not None and not local[0].is_set():
            return False  # ours, and still running
        timeout = float(record.get("heartbeat_timeout") or 60.0)
        updated = float(record.get("updated") or 0.0)
        return time.time() - updated > _STALE_FACTOR * max(timeout, 2.0)

    @staticmethod
    async def _flow_run_state(flow_run_id: str) -> Any:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        async with get_client() as client:
            try:
                return (await client.read_flow_run(uuid.UUID(flow_run_id))).state
            except ObjectNotFound:
                return None

    @staticmethod
    async def _set_flow_run_state(flow_run_id: str, kind: str, message: str) -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled, Crashed

        state: Any = Crashed(message=message) if kind == "crashed" else Cancelled(message=message)
        async with get_client() as client:
            await client.set_flow_run_state(uuid.UUID(flow_run_id), state, force=True)


def _from_prefect(state_type: str) -> JobState:
    return {"COMPLETED": "completed", "CANCELLED": "cancelled", "CRASHED": "crashed"}.get(
        state_type, "failed"
    )  # type: ignore[return-value]


class _OpenStore:
    """``async with``: a JobStore over a sink opened for the block, closed after it."""

    def __init__(self, sink: Sink, job_id: str) -> None:
        self.sink = sink
        self.job_id = job_id

    async def __aenter__(self) -> JobStore:
        return JobStore(self.sink, self.job_id)

    async def __aexit__(self, *exc: object) -> None:
        await self.sink.aclose()
