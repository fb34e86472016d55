"""JobService: ``/api/v2`` jobs from request to record, durable across restarts and replicas.

A job is created as a record and a source list in the sink, claimed on this host, and handed
to the executor. What each item became is read from BatchRemover's manifest: the local one
while this host runs the job, the sink's copy once it has ended (or from another replica).
A job whose process died is finished by the next process to claim it: at start-up for the
jobs of this host, or when asked about it once its replica has stopped reporting.
Deterministic output keys and skip-existing mean nothing already stored is paid for again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from .._logs import get_logger
from ..batch._manifest import job_fields, latest_records
from ..errors import PhotoroomBGError
from ._executor import Executor, JobSpec, LiveJob
from ._options import build_options
from ._problems import Problem, error_code, problem_for
from ._serialize import (
    STORED_STATUSES,
    item_from_record,
    jsonable,
    progress_json,
    report_json,
)
from ._settings import ServiceSettings
from ._store import (
    CANCELLED,
    COMPLETED,
    FAILED,
    JobRecord,
    JobStore,
    LocalClaims,
    job_lines,
)

__all__ = ["JobService"]

logger = get_logger("photoroom_bg.service")


_FINISHED_CACHE = 32  # finished jobs whose items are kept parsed


def _not_found(job_id: str) -> Problem:
    return Problem(404, "job_not_found", "No such job", f"no job {job_id!r} for this token")


class JobService:
    """Creates, resumes, describes and cancels jobs; see the module docs."""

    def __init__(
        self,
        settings: ServiceSettings,
        store: JobStore,
        claims: LocalClaims,
        executor: Executor,
    ) -> None:
        self.settings = settings
        self.store = store
        self.claims = claims
        self.executor = executor
        self._owners: dict[str, str] = {}  # running job -> owner, for the per-token cap
        self._lock = asyncio.Lock()
        self._writing = asyncio.Lock()  # record writes of the jobs running here
        self._tails: dict[str, tuple[int, list[dict[str, Any]]]] = {}  # local manifests read
        self._reported: dict[str, list[dict[str, Any]]] = {}  # live results, as records
        self._finished_items: dict[str, list[dict[str, Any]]] = {}  # finished jobs' items

    def __repr__(self) -> str:
        return f"JobService(executor={self.executor!r}, running={len(self._owners)})"

    # -- creating and running ---------------------------------------------------------------

    async def create(
        self, owner: str, sources: list[dict[str, str]], options_doc: dict[str, Any]
    ) -> JobRecord:
        """Record a new job and start it.

        Raises:
            Problem: 429 ``too_many_jobs`` when the caller already runs the maximum.
        """
        async with self._lock:
            mine = sum(1 for o in self._owners.values() if o == owner)
            if mine >= self.settings.max_jobs_per_token:
                raise Problem(
                    429,
                    "too_many_jobs",
                    "Too many jobs running",
                    f"at most {self.settings.max_jobs_per_token} jobs may run at once per "
                    "token; wait for one to finish or cancel one",
                    headers={"Retry-After": "5"},
                )
            record = JobRecord(
                job_id=uuid.uuid4().hex,
                owner=owner,
                created=time.time(),
                image_count=len(sources),
                options=options_doc,
                replica=self.settings.replica_id,
                executor=self.executor.name,
            )
            self._owners[record.job_id] = owner
        try:
            await self.store.save_sources(record.job_id, sources)
            await self.store.save(record)
            if self.executor.in_process:
                self.claims.claim(record.job_id)
            try:
                await self._start(record, sources)
            except Exception as exc:
                raise await self._not_started(record, exc) from None
        except BaseException:
            self._owners.pop(record.job_id, None)
            self.claims.release(record.job_id, finished=True)
            raise
        return record

    async def _not_started(self, record: JobRecord, error: Exception) -> Problem:
        """Record a job its executor could not start as failed (never left "running" with
        nothing running it) and say so: 503, try again later."""
        logger.error("job %s could not start", record.job_id, exc_info=error)
        detail = f"the {self.executor.name} executor could not start the job: {_message(error)}"
        record.state = FAILED
        record.error = {"code": "executor_unavailable", "message": detail}
        with contextlib.suppress(PhotoroomBGError):
            await self.store.save(record)
        return Problem(
            503,
            "executor_unavailable",
            "Jobs cannot start now",
            detail,
            headers={"Retry-After": "5"},
            extra={"job_id": record.job_id},
        )

    async def _start(self, record: JobRecord, sources: list[dict[str, str]]) -> None:
        self._owners[record.job_id] = record.owner
        spec = JobSpec(
            job_id=record.job_id,
            sources=sources,
            options=build_options(record.options),
            manifest_key=record.manifest_key,
            manifest_path=self.claims.manifest_path(record.job_id),
        )
        await self.executor.start(spec, self._ended)

    async def _ended(self, live: LiveJob) -> None:
        self._owners.pop(live.job_id, None)
        self._tails.pop(live.job_id, None)
        self._reported.pop(live.job_id, None)
        async with self._writing:  # a heartbeat must not write "running" over the end
            await self._record_end(live)
        self.claims.release(live.job_id, finished=True)

    async def _record_end(self, live: LiveJob) -> None:
        record = await self.store.load(live.job_id)
        if record is None:
            return
        if live.error is not None:
            record.state = FAILED
            record.error = {"code": error_code(live.error), "message": _message(live.error)}
        else:
            record.state = CANCELLED if live.cancel_requested else COMPLETED
        if live.report is not None:
            record.report = report_json(live.report)
        elif live.summary is not None:
            record.report = jsonable(live.summary)
        if live.progress is not None:
            record.progress = progress_json(live.progress, expected_total=record.image_count)
        await self.store.save(record)

    async def resume_orphans(self) -> list[str]:
        """Finish the jobs this host was running when its process died (at start-up)."""
        resumed: list[str] = []
        if not self.executor.in_process:
            return resumed
        for job_id in self.claims.orphans():
            if not self.claims.claim(job_id):
                continue  # another live worker on this host runs it
            try:
                if await self._adopt(job_id):
                    resumed.append(job_id)
                else:
                    self.claims.release(job_id, finished=True)
            except PhotoroomBGError as exc:
                logger.error("could not resume job %s: %s", job_id, exc)
                self.claims.release(job_id, finished=False)
        if resumed:
            logger.info("resumed %d unfinished job(s)", len(resumed))
        return resumed

    async def _adopt(self, job_id: str) -> bool:
        """Run a claimed job again from its records; ``False`` when it needs nothing."""
        record = await self.store.load(job_id)
        if record is None or record.finished:
            return False
        if record.executor != self.executor.name:
            # its items and state live where that executor keeps them: running it here
            # would pay again and report nothing; it waits for a service running that one
            logger.warning(
                "job %s was started by the %s executor, not %s: left as it is",
                job_id,
                record.executor,
                self.executor.name,
            )
            return False
        sources = await self.store.load_sources(job_id)
        record.replica = self.settings.replica_id
        await self.store.save(record)
        logger.info("finishing job %s (%d images)", job_id, record.image_count)
        await self._start(record, sources)
        if await self.store.cancel_requested(job_id):
            await self.executor.cancel(job_id)
        return True

    async def _maybe_adopt(self, record: JobRecord) -> None:
        """Take over a running job nobody runs any more: one whose process on this host
        died (its lock is free) or whose replica stopped reporting for ``lease_seconds``."""
        if record.finished or self.executor.live(record.job_id) is not None:
            return
        if not self.executor.in_process:
            if record.executor == self.executor.name:
                await self._follow(record)
            return
        ours = record.replica == self.settings.replica_id
        stale = time.time() - record.updated > self.settings.lease_seconds
        if not (ours or stale) or not self.claims.claim(record.job_id):
            return
        try:
            adopted = await self._adopt(record.job_id)
        except BaseException:
            self.claims.release(record.job_id, finished=False)
            raise
        if not adopted:
            self.claims.release(record.job_id, finished=True)

    async def _follow(self, record: JobRecord) -> None:
        """Watch a job that runs elsewhere (its flow run, its workers) until it ends, so
        that its record is updated even when the replica that started it has gone."""
        if record.job_id in self.executor.running():
            return
        spec = JobSpec(
            job_id=record.job_id,
            sources=await self.store.load_sources(record.job_id),
            options=build_options(record.options),
            manifest_key=record.manifest_key,
        )
        if await self.executor.follow(spec, self._ended) is not None:
            self._owners[record.job_id] = record.owner

    async def heartbeat(self) -> None:
        """Update the records of the jobs running here (progress, liveness) and pick up
        cancel requests made on other replicas; runs until cancelled."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            for job_id in self.executor.running():
                with contextlib.suppress(PhotoroomBGError):
                    await self._beat(job_id)

    async def _beat(self, job_id: str) -> None:
        live = self.executor.live(job_id)
        if live is None or live.ended:
            return
        if not live.cancel_requested and await self.store.cancel_requested(job_id):
            await self.executor.cancel(job_id)
        async with self._writing:
            await self._record_progress(live)

    async def _record_progress(self, live: LiveJob) -> None:
        if live.ended:
            return
        record = await self.store.load(live.job_id)
        if record is None or record.finished:
            return
        record.replica = self.settings.replica_id
        if live.progress is not None:
            record.progress = progress_json(live.progress, expected_total=record.image_count)
        await self.store.save(record)

    # -- reading ----------------------------------------------------------------------------

    async def get(self, owner: str, job_id: str) -> JobRecord:
        """The caller's job; another token's job is as unknown as a missing one (404)."""
        record = await self.store.load(job_id)
        if record is None or not hmac.compare_digest(record.owner, owner):
            raise _not_found(job_id)
        await self._maybe_adopt(record)
        return record

    async def items(self, record: JobRecord) -> list[dict[str, Any]]:
        """One item per input, in input order: what the manifests record, ``pending`` for
        inputs not finished yet, ``cancelled`` for inputs a finished job never started."""
        cached = self._finished_items.get(record.job_id)
        if cached is not None and record.finished:
            return [dict(item) for item in cached]
        elsewhere = (
            await self.executor.records(record.job_id)
            if record.executor == self.executor.name
            else None
        )
        if elsewhere is not None:
            records = elsewhere  # kept by the executor (e.g. in shard manifests)
        elif (live := self.executor.live(record.job_id)) is not None:
            # running here: its local manifest holds every record, read incrementally. The
            # batch reports a result (to the event stream) a moment before its writer puts it
            # there, so the results reported so far come after the manifest's lines: an item
            # the events announced is never "pending" here
            records = await self._local_records(record.job_id) + self._live_records(live)
        else:
            lines = await self.store.manifest_lines(record)
            lines += await self.claims.aread_manifest(record.job_id)
            records = list(job_lines(lines))
        items = self._merge(record, records)
        if record.finished:
            while len(self._finished_items) >= _FINISHED_CACHE:
                self._finished_items.pop(next(iter(self._finished_items)))
            self._finished_items[record.job_id] = items
            return [dict(item) for item in items]
        return items

    def _live_records(self, live: LiveJob) -> list[dict[str, Any]]:
        """The results a job running here has reported, as manifest records (each made once)."""
        made = self._reported.setdefault(live.job_id, [])
        made.extend(job_fields(result) for result in live.results[len(made) :])
        return made

    async def _local_records(self, job_id: str) -> list[dict[str, Any]]:
        """The job records of this host's manifest, parsing only the lines added since the
        last call (a client polling a 2,000-image job must not re-read it all each time)."""
        offset, records = self._tails.get(job_id, (0, []))
        lines, offset = await asyncio.to_thread(self.claims.read_manifest_from, job_id, offset)
        records.extend(job_lines(lines))
        self._tails[job_id] = (offset, records)
        return records

    def _merge(self, record: JobRecord, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # a resumed run sees outputs made before the restart as "skipped": the record that
        # says this job made them is kept
        merged = latest_records(records)
        items = []
        for index in range(record.image_count):
            if index in merged:
                items.append(item_from_record(merged[index]))
            elif record.finished:
                # the same item a manifest's "cancelled" line gives, error code included
                reason = "the job ended before this image was started"
                items.append(
                    item_from_record(
                        {"index": index, "status": CANCELLED, "key": None, "reason": reason}
                    )
                )
            else:
                items.append(
                    {
                        "index": index,
                        "status": "pending",
                        "key": None,
                        "error": None,
                        "reason": None,
                        "stored": False,
                    }
                )
        return items

    async def describe(
        self,
        record: JobRecord,
        *,
        status: tuple[str, ...] | None = None,
        offset: int = 0,
        limit: int = 100,
        output_url: Any = None,
        include_items: bool = True,
    ) -> dict[str, Any]:
        """The job's JSON: state, counts, progress and ETA, report, a page of items."""
        items = await self.items(record)
        counts = counts_of(items)
        live = self.executor.live(record.job_id)
        progress = (
            progress_json(live.progress, expected_total=record.image_count)
            if live and live.progress
            else record.progress
        )
        body: dict[str, Any] = {
            "job_id": record.job_id,
            "status": record.state,
            "created": record.created,
            "updated": record.updated,
            "image_count": record.image_count,
            "counts": counts,
            "stored_count": sum(counts.get(s, 0) for s in STORED_STATUSES),
            "progress": progress,
            "eta_seconds": (progress or {}).get("eta") if not record.finished else 0,
            "report": record.report,
            "error": record.error,
            "executor": record.executor,
            "replica": record.replica,
        }
        if include_items:
            chosen = [i for i in items if status is None or i["status"] in status]
            page = chosen[offset : offset + limit]
            for item in page:
                if output_url is not None and item.get("stored"):
                    item["output_url"] = output_url(record.job_id, item["index"])
            body["items"] = page
            body["page"] = {
                "offset": offset,
                "limit": limit,
                "total": len(chosen),
                "status": ",".join(status) if status else None,
                "next_offset": offset + limit if offset + limit < len(chosen) else None,
            }
        return jsonable(body)  # type: ignore[no-any-return]

    async def item(self, record: JobRecord, index: int) -> dict[str, Any]:
        """One item, or a 404 problem."""
        if not 0 <= index < record.image_count:
            raise Problem(404, "item_not_found", "No such item", f"no item {index}")
        return (await self.items(record))[index]

    # -- cancelling -------------------------------------------------------------------------

    async def cancel(self, record: JobRecord) -> None:
        """Stop the job wherever it runs: here at once, elsewhere at its next heartbeat."""
        if record.finished:
            return
        await self.store.request_cancel(record.job_id)
        await self.executor.cancel(record.job_id)

    def running_for(self, owner: str) -> int:
        """Jobs the owner runs in this process."""
        return sum(1 for o in self._owners.values() if o == owner)


def _message(error: BaseException) -> str:
    if isinstance(error, PhotoroomBGError):
        return problem_for(error).detail or type(error).__name__
    return f"unexpected {type(error).__name__}"


def counts_of(items: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Items per status."""
    counts: dict[str, int] = {}
    for item in items:
        counts[str(item["status"])] = counts.get(str(item["status"]), 0) + 1
    return counts
