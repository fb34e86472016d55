"""The ``remove_backgrounds`` flow and the ``remove_shard`` task.

The flow lists the sources lazily, cuts them into shards of ``shard_size`` references and
keeps at most ``max_running_shards`` of them in flight: as ``remove_shard`` tasks in its own
task runner (threads by default), or deferred with ``.delay()`` to ``prefect task serve``
workers. It watches them through their records in the sink and their Prefect states:

- a shard whose worker died (no heartbeat for ``heartbeat_timeout`` seconds while Prefect
  still says it runs) is marked ``Crashed`` and given to another worker; the new copy skips
  what the lost one stored;
- a stop request (a 402 or 401/403 in any shard, a lost sink, a cancel) ends dispatching;
  shards not started are cancelled without calling Photoroom, running ones stop at their
  next beat;
- at the end the totals become the flow's result, its state and two artifacts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import attrs
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Crashed, Failed

from ..errors import AuthenticationError, ConfigurationError, PhotoroomBGError
from ..sources import SourceReader, iter_sources
from ._artifacts import publish_artifacts
from ._engine import ensure_rate_limit
from ._environment import check_shared_sink, open_worker_sink, worker_reader
from ._jobstore import JobStore, check_job_id
from ._options import options_to_dict
from ._secrets import resolve_api_key
from ._shard import run_shard, should_retry
from ._summary import JobFailed, RunSummary, RunTotals, ShardSummary, unstarted_summary

__all__ = ["DEFAULT_RATE_LIMIT", "remove_backgrounds", "remove_shard"]

logger = logging.getLogger("photoroom_bg.prefect")

#: The global concurrency limit a flow creates when given ``requests_per_minute``.
DEFAULT_RATE_LIMIT = "photoroom-bg"
_MAX_RESUBMITS = 3
_FINAL_RECORDS = frozenset({"completed", "stopped", "cancelled"})
_UNSEEN = object()


@task(
    name="remove-shard",
    task_run_name="shard-{shard}",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=should_retry,
    cache_policy=NO_CACHE,
)
async def remove_shard(
    sources: list[str],
    sink: str,
    job_id: str,
    shard: int = 0,
    lease: str | None = None,
    attempt: str | None = None,
    options: dict[str, Any] | None = None,
    concurrency: int = 8,
    engine: str = "photoroom",
    api_key_secret: str | None = None,
    rate_limit: str | None = None,
    requests_per_minute: float | None = None,
    heartbeat: float = 5.0,
    max_failures: int = 20,
) -> dict[str, Any]:
    """Remove the backgrounds of one shard of a job, with :class:`~photoroom_bg.BatchRemover`.

    Every parameter is a reference or a setting, never an image or a key. The shard's
    manifest is kept in the sink, so a retried, duplicated or resumed shard skips what is
    stored and never pays for it again. Returns a :class:`ShardSummary` as a dict (counts and
    a bounded list of failures); ends ``Cancelled`` when the job was stopped or a newer copy
    of the shard took over, ``Failed`` when it met a 402, 401/403 or lost storage (after
    asking the whole job to stop).

    Args:
        sources: the shard's sources: paths, URLs or ``s3://`` object URIs.
        sink: where outputs go (``s3://bucket/prefix`` or a folder every worker can reach).
        job_id: the job; its records live under ``_photoroom_bg/jobs/<job_id>/`` in the sink.
        shard: the shard's number in the job.
        lease: this copy's token (the flow makes one per submission); ``None``: a new one.
        attempt: the job attempt this shard belongs to (``None``: any).
        options: a dict for :func:`options_from_dict` (``{"type": "edit", ...}``).
        concurrency: images processed at once in this shard.
        engine: ``"photoroom"``, ``"local"`` or ``"local:<model>"``.
        api_key_secret: name of a Prefect ``Secret`` block holding the Photoroom key
            (``None``: ``$PHOTOROOM_API_KEY`` of the worker).
        rate_limit: name of a Prefect global rate limit taken before each billed call.
        requests_per_minute: a per-shard limit, used only without ``rate_limit``.
        heartbeat: seconds between beats.
        max_failures: failed inputs listed in the summary.
    """
    from prefect.runtime import task_run

    summary, reason = await run_shard(
        sources,
        sink,
        job_id=job_id,
        shard=shard,
        lease=lease or uuid.uuid4().hex,
        attempt=attempt,
        options=options,
        concurrency=concurrency,
        engine=engine,
        api_key_secret=api_key_secret,
        rate_limit=rate_limit,
        requests_per_minute=requests_per_minute,
        heartbeat=heartbeat,
        max_failures=max_failures,
        task_run_id=str(task_run.id) if task_run.id else None,
    )
    if summary.outcome in ("cancelled", "superseded"):
        cancelled: Any = Cancelled(message=f"shard {shard}: {reason}", data=summary.to_dict())
        return cancelled  # type: ignore[no-any-return]
    return summary.to_dict()


@flow(name="remove-backgrounds", validate_parameters=True)
async def remove_backgrounds(
    sources: list[str] | str,
    sink: str,
    options: dict[str, Any] | None = None,
    shard_size: int = 100,
    concurrency: int = 8,
    engine: str = "photoroom",
    api_key_secret: str | None = None,
    requests_per_minute: float | None = None,
    rate_limit: str | None = None,
    deferred: bool = False,
    max_running_shards: int = 8,
    job_id: str | None = None,
    heartbeat_timeout: float = 60.0,
    max_failures: int = 50,
) -> dict[str, Any]:
    """Remove the backgrounds of many images, in shards, on Prefect.

    Parameters are references only (Prefect stores them and shows them in its UI): never an
    image, never a key. Returns a :class:`RunSummary` as a dict. Ends ``Completed`` when every
    input is stored; ``Failed`` (data: :class:`JobFailed` with the summary) when some are not,
    with the reason (a 402 or 401/403 in any shard stops the whole job); ``Cancelled`` after
    :meth:`PrefectJobs.cancel`. Run it again with the same ``job_id`` to finish a job: what is
    stored is skipped and never paid for twice.

    Args:
        sources: source references: paths, folders, globs, URLs, ``s3://`` URIs, or an
            ``s3://bucket/prefix/`` to list. Listed lazily, by this flow's process.
        sink: where outputs go: ``s3://bucket/prefix`` or a folder every worker can reach
            (S3 endpoint and credentials come from each process's environment).
        options: a dict for :func:`options_from_dict`, e.g. ``{"type": "edit",
            "background_color": "FFFFFF"}`` (default: segment, PNG cut-outs).
        shard_size: sources per shard (one task run each).
        concurrency: images processed at once within a shard.
        engine: ``"photoroom"``, ``"local"`` or ``"local:<model>"``.
        api_key_secret: name of a Prefect ``Secret`` block holding the Photoroom key;
            ``None``: each worker's ``$PHOTOROOM_API_KEY``.
        requests_per_minute: the account's budget for the whole fleet: the flow creates (or
            updates) the global rate limit ``rate_limit`` (default ``"photoroom-bg"``) with it.
        rate_limit: name of a Prefect global concurrency limit with slot decay that every
            shard takes a slot of before each billed call.
        deferred: send shards to ``prefect task serve`` workers (``remove_shard.delay``)
            instead of this flow's task runner.
        max_running_shards: shards in flight at once (listing waits for room).
        job_id: the job's id (default: this flow run's id); reuse it to resume a job.
        heartbeat_timeout: seconds without a beat after which a running shard's worker is
            taken for dead and the shard is given to another.
        max_failures: failed inputs listed in the result and the artifact.
    """
    from prefect.runtime import flow_run

    params = JobParameters(
        sources=[sources] if isinstance(sources, str) else list(sources),
        sink=sink,
        options=options_to_dict(options),
        shard_size=shard_size,
        concurrency=concurrency,
        engine=engine,
        api_key_secret=api_key_secret,
        requests_per_minute=requests_per_minute,
        rate_limit=rate_limit,
        deferred=deferred,
        max_running_shards=max_running_shards,
        job_id=job_id or str(flow_run.id),
        heartbeat_timeout=heartbeat_timeout,
        max_failures=max_failures,
    )
    attempt = f"{flow_run.id}:{flow_run.run_count}"
    summary = await _Coordinator(params, attempt, str(flow_run.id)).run()
    if summary.state == "completed":
        return summary.to_dict()
    error = JobFailed(summary)
    ended: State[Any] = (
        Cancelled(message=summary.message, data=error)
        if summary.state == "cancelled"
        else Failed(message=summary.message, data=error)
    )
    return ended  # type: ignore[return-value]


@attrs.frozen(kw_only=True)
class JobParameters:
    """The validated parameters of a job (what ``remove_backgrounds`` takes).

    Checked when built: a bad value fails before anything is listed or billed.
    """

    sources: list[str]
    sink: str
    options: dict[str, Any] = attrs.field(factory=dict)
    shard_size: int = 100
    concurrency: int = 8
    engine: str = "photoroom"
    api_key_secret: str | None = None
    requests_per_minute: float | None = None
    rate_limit: str | None = None
    deferred: bool = False
    max_running_shards: int = 8
    job_id: str | None = None
    heartbeat_timeout: float = 60.0
    max_failures: int = 50

    def __attrs_post_init__(self) -> None:
        check_shared_sink(self.sink)
        if not self.sources or not all(isinstance(s, str) and s for s in self.sources):
            raise ConfigurationError("sources must be a non-empty list of references (strings)")
        for name in ("shard_size", "concurrency", "max_running_shards"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1")
        if self.heartbeat_timeout <= 0:
            raise ConfigurationError("heartbeat_timeout must be positive")
        if self.requests_per_minute is not None and self.requests_per_minute <= 0:
            raise ConfigurationError("requests_per_minute must be positive")
        if self.engine != "photoroom" and not (
            self.engine == "local" or self.engine.startswith("local:")
        ):
            raise ConfigurationError(
                f"unknown engine {self.engine!r}: use 'photoroom', 'local' or 'local:<model>'"
            )
        if self.job_id is not None:
            check_job_id(self.job_id)
        options_to_dict(self.options)  # validates

    @property
    def limit_name(self) -> str | None:
        """The fleet rate limit shards take slots of (``None``: none)."""
        if self.rate_limit:
            return self.rate_limit
        return DEFAULT_RATE_LIMIT if self.requests_per_minute else None

    def flow_parameters(self) -> dict[str, Any]:
        """The parameters of a ``remove_backgrounds`` flow run."""
        return {
            "sources": list(self.sources),
            "sink": self.sink,
            "options": dict(self.options),
            "shard_size": self.shard_size,
            "concurrency": self.concurrency,
            "engine": self.engine,
            "api_key_secret": self.api_key_secret,
            "requests_per_minute": self.requests_per_minute,
            "rate_limit": self.rate_limit,
            "deferred": self.deferred,
            "max_running_shards": self.max_running_shards,
            "job_id": self.job_id,
            "heartbeat_timeout": self.heartbeat_timeout,
            "max_failures": self.max_failures,
        }


@attrs.define
class _Flight:
    """A shard in flight: one submission of it."""

    shard: int
    sources: list[str]
    lease: str
    seq: int
    task_run_id: Any
    future: Any
    resubmits: int
    alive_at: float
    beat: Any = _UNSEEN
    started: bool = False


class _Coordinator:
    """One attempt of a job: dispatches shards, watches them, adds them up."""

    def __init__(self, params: JobParameters, attempt: str, flow_run_id: str) -> None:
        assert params.job_id is not None
        self.p = params
        self.job_id = params.job_id
        self.attempt = attempt
        self.flow_run_id = flow_run_id
        self.totals = RunTotals(max_failures=params.max_failures)
        self.flights: dict[int, _Flight] = {}
        self.stopping = False
        self.cancelled = False
        self.dispatched = 0
        self._seq = 0
        self.heartbeat = max(0.2, params.heartbeat_timeout / 6)
        self.poll = min(0.5, max(0.1, params.heartbeat_timeout / 20))
        self._last_job_write = 0.0
        self.log: Any = logger
        self.refused: str | None = None

    async def run(self) -> RunSummary:
        from prefect.client.orchestration import get_client

        self.log = get_run_logger()
        started = time.monotonic()
        sink = open_worker_sink(self.p.sink)
        self.store = JobStore(sink, self.job_id)
        reader = worker_reader()
        try:
            await self.store.start_attempt(self.attempt)
            await self.store.write(self.store.parameters_key, self.p.flow_parameters())
            await self._write_job("running", force=True)
            if self.p.requests_per_minute and self.p.limit_name:
                await ensure_rate_limit(self.p.limit_name, self.p.requests_per_minute)
            balance = await self._balance()
            if self.refused is not None:  # every shard would meet the same 401/403
                await self._stop(self.refused, "stopped")
            async with get_client() as client:
                self.client = client
                try:
                    await self._dispatch_all(reader)
                except BaseException:
                    # this flow run is being cancelled or crashed: tell the shards, so none
                    # goes on spending for a job nobody watches
                    await asyncio.shield(
                        self.store.request_stop("the flow run was interrupted", "cancelled")
                    )
                    raise
            after = await self._balance() if balance is not None else None
            summary = self.totals.summary(
                job_id=self.job_id,
                sink=self.p.sink,
                manifests=f"{self.p.sink.rstrip('/')}/{self.store.prefix}/shards/",
                cancelled=self.cancelled,
                credits_spent=round(balance - after, 4)
                if after is not None and balance is not None
                else None,
                duration=time.monotonic() - started,
            )
            await self._write_job(summary.state, force=True, summary=summary)
            await publish_artifacts(summary)
            self.log.info("job %s %s: %s", self.job_id, summary.state, summary.message)
            return summary
        finally:
            await reader.aclose()
            await sink.aclose()

    # -- listing and dispatching -------------------------------------------------------------

    async def _shards(self, reader: SourceReader) -> AsyncGenerator[list[str], None]:
        chunk: list[str] = []
        async for source in iter_sources(self.p.sources, reader=reader):
            chunk.append(source.location)
            if len(chunk) == self.p.shard_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    async def _dispatch_all(self, reader: SourceReader) -> None:
        shards = self._shards(reader)
        pending: list[str] | None = None
        listed_all = False
        try:
            while True:
                while (
                    not self.stopping
                    and not listed_all
                    and len(self.flights) < self.p.max_running_shards
                ):
                    if pending is None:
                        pending = await self._next_shard(shards)
                        if pending is None:
                            listed_all = True
                            break
                    await self._submit(self.dispatched, pending, resubmits=0)
                    self.dispatched += 1
                    pending = None
                if not self.flights and (listed_all or self.stopping):
                    break
                await asyncio.sleep(self.poll)
                await self._poll()
            if self.stopping and not listed_all:
                # inputs never handed to a shard are cancelled: count them
                left = len(pending or [])
                async for chunk in shards:
                    left += len(chunk)
                self.totals.add_cancelled(left)
        finally:
            await shards.aclose()
            await self._join_local()

    async def _next_shard(self, shards: AsyncIterator[list[str]]) -> list[str] | None:
        try:
            return await shards.__anext__()
        except StopAsyncIteration:
            return None
        except PhotoroomBGError as exc:
            await self._stop(f"could not list the sources: {exc}", "stopped")
            return None

    def _params(self, shard: int, sources: list[str], lease: str) -> dict[str, Any]:
        limit = self.p.limit_name
        return {
            "sources": sources,
            "sink": self.p.sink,
            "job_id": self.job_id,
            "shard": shard,
            "lease": lease,
            "attempt": self.attempt,
            "options": self.p.options,
            "concurrency": self.p.concurrency,
            "engine": self.p.engine,
            "api_key_secret": self.p.api_key_secret,
            "rate_limit": limit,
            "requests_per_minute": None if limit else self.p.requests_per_minute,
            "heartbeat": self.heartbeat,
            "max_failures": min(self.p.max_failures, 20),
        }

    async def _submit(self, shard: int, sources: list[str], *, resubmits: int) -> None:
        lease = uuid.uuid4().hex
        # the record names the copy that may run: an older copy that starts later sees it
        # and ends without calling Photoroom
        await self.store.write_shard(
            shard,
            {"lease": lease, "attempt": self.attempt, "state": "queued", "size": len(sources)},
        )
        params = self._params(shard, sources, lease)
        if self.p.deferred:
            future = await asyncio.to_thread(remove_shard.delay, **params)
        else:
            future = remove_shard.submit(**params)
        self._seq += 1
        self.flights[shard] = _Flight(
            shard=shard,
            sources=sources,
            lease=lease,
            seq=self._seq,
            task_run_id=future.task_run_id,
            future=future,
            resubmits=resubmits,
            alive_at=time.monotonic(),
        )

    async def _join_local(self) -> None:
        if not self.p.deferred:
            for flight in list(self.flights.values()):
                await asyncio.to_thread(flight.future.wait)

    # -- watching ------------------------------------------------------------------------------

    async def _poll(self) -> None:
        from prefect.client.schemas.objects import StateType

        control = await self.store.control()
        if control.stop is not None and not self.stopping:
            await self._stop(control.stop, control.kind or "stopped")
        elif control.attempt not in (None, self.attempt) and not self.stopping:
            # the same job was started again elsewhere: its shards supersede ours
            await self._stop("a newer attempt of this job took over", "cancelled")
        flights = list(self.flights.values())
        # states first: a shard writes its final record before its task run ends, so a final
        # state read now means the record read next is final too
        states = await self._states(flights)
        records = await asyncio.gather(*(self.store.read_shard(f.shard) for f in flights))
        now = time.monotonic()
        lost: list[_Flight] = []
        for flight, record in zip(flights, records, strict=True):
            mine = record is not None and record.get("lease") == flight.lease
            state = states.get(str(flight.task_run_id))
            if mine and record is not None and record.get("state") in _FINAL_RECORDS:
                summary = record.get("summary")
                if summary:
                    self._finish(flight, ShardSummary.from_dict(summary))
                    continue
            if state is not None and state.is_final():
                await self._ended_without_record(flight, state)
                continue
            running = state is not None and state.type in (StateType.PENDING, StateType.RUNNING)
            running = running or (mine and record is not None and record.get("state") == "running")
            if not running:  # queued, or waiting to retry
                flight.alive_at = now
                continue
            flight.started = True
            beat = record.get("beat") if mine and record is not None else None
            if beat != flight.beat:
                flight.beat, flight.alive_at = beat, now
            elif now - flight.alive_at > self.p.heartbeat_timeout:
                lost.append(flight)
        if lost:
            stranded = self._stranded()
            for flight in lost:
                await self._replace(
                    flight,
                    f"no heartbeat for {self.p.heartbeat_timeout:g} s: its worker was lost",
                    crashed=True,
                )
            for flight in stranded:
                if flight.shard in self.flights and flight not in lost:
                    await self._replace(
                        flight, "its worker may have been lost before it started", crashed=False
                    )
        await self._write_job("running")

    async def _states(self, flights: list[_Flight]) -> dict[str, State[Any]]:
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

        if not flights:
            return {}
        ids = [f.task_run_id for f in flights]
        runs = await self.client.read_task_runs(
            task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=ids)), limit=len(ids)
        )
        return {str(run.id): run.state for run in runs if run.state is not None}

    def _stranded(self) -> list[_Flight]:
        """Deferred shards handed to a worker that had not started them: the server's queue
        is first in, first out, so a shard still waiting while a later one has started was
        taken by some worker; if that worker died it will never start."""
        if not self.p.deferred:
            return []
        started = [f.seq for f in self.flights.values() if f.started]
        if not started:
            return []
        newest = max(started)
        return [f for f in self.flights.values() if not f.started and f.seq < newest]

    def _finish(self, flight: _Flight, summary: ShardSummary) -> None:
        del self.flights[flight.shard]
        self.totals.add(summary)
        if summary.outcome == "stopped" and summary.stop_reason:
            self.totals.stop(f"shard {flight.shard}: {summary.stop_reason}")

    async def _ended_without_record(self, flight: _Flight, state: State[Any]) -> None:
        from prefect.client.schemas.objects import StateType

        del self.flights[flight.shard]
        if state.type == StateType.CANCELLED:
            self.totals.add(
                unstarted_summary(
                    job_id=self.job_id,
                    shard=flight.shard,
                    size=len(flight.sources),
                    outcome="cancelled",
                    reason=state.message,
                )
            )
            return
        message = state.message or state.name or "the shard task failed"
        self.totals.add_unfinished(
            shard=flight.shard,
            size=len(flight.sources),
            outcome="failed",
            error_type=f"Shard{state.name or 'Failed'}",
            message=message,
        )
        # what failed one shard (a missing key, a broken sink) fails the others: stop
        await self._stop(f"shard {flight.shard} failed: {message}", "stopped")

    async def _replace(self, flight: _Flight, reason: str, *, crashed: bool) -> None:
        """Mark a shard's task run as ended and give the shard to another worker."""
        self.log.warning("shard %d: %s", flight.shard, reason)
        self.flights.pop(flight.shard, None)
        state: State[Any] = Crashed(message=reason) if crashed else Cancelled(message=reason)
        try:
            await self.client.set_task_run_state(flight.task_run_id, state, force=True)
        except Exception as exc:  # the shard is replaced either way
            self.log.warning("could not mark shard %d's task run: %s", flight.shard, exc)
        if self.stopping:
            self.totals.add(
                unstarted_summary(
                    job_id=self.job_id,
                    shard=flight.shard,
                    size=len(flight.sources),
                    outcome="cancelled",
                    reason=reason,
                )
            )
        elif flight.resubmits >= _MAX_RESUBMITS:
            self.totals.add_unfinished(
                shard=flight.shard,
                size=len(flight.sources),
                outcome="lost",
                error_type="WorkerLost",
                message=f"given up after {_MAX_RESUBMITS} lost workers: {reason}",
            )
        else:
            await self._submit(flight.shard, flight.sources, resubmits=flight.resubmits + 1)

    async def _stop(self, reason: str, kind: str) -> None:
        """Stop dispatching; cancel shards no worker has started; running ones stop at
        their next beat."""
        if self.stopping:
            return
        self.stopping = True
        self.cancelled = kind == "cancelled"
        self.totals.stop(reason)
        self.log.warning("job %s stopping: %s", self.job_id, reason)
        await self.store.request_stop(reason, "cancelled" if self.cancelled else "stopped")
        if not self.p.deferred:
            return  # local shards check the stop as they start
        for flight in [f for f in self.flights.values() if not f.started]:
            del self.flights[flight.shard]
            try:
                await self.client.set_task_run_state(
                    flight.task_run_id, Cancelled(message=f"job stopped: {reason}"), force=True
                )
            except Exception as exc:
                self.log.warning("could not cancel shard %d's task run: %s", flight.shard, exc)
            self.totals.add(
                unstarted_summary(
                    job_id=self.job_id,
                    shard=flight.shard,
                    size=len(flight.sources),
                    outcome="cancelled",
                    reason=reason,
                )
            )

    # -- the job record ------------------------------------------------------------------------

    async def _write_job(
        self, state: str, *, force: bool = False, summary: RunSummary | None = None
    ) -> None:
        now = time.monotonic()
        if not force and now - self._last_job_write < max(1.0, self.heartbeat):
            return
        self._last_job_write = now
        record: dict[str, Any] = {
            "job_id": self.job_id,
            "flow_run_id": self.flow_run_id,
            "attempt": self.attempt,
            "state": state,
            "shards_dispatched": self.dispatched,
            "shards_running": len(self.flights),
            "counts": dict(self.totals.counts),
            "stop_reason": self.totals.stop_reason,
            "updated": time.time(),
            "heartbeat_timeout": self.p.heartbeat_timeout,
        }
        if summary is not None:
            record["summary"] = summary.to_dict()
        try:
            await self.store.write(self.store.job_key, record)
        except PhotoroomBGError as exc:
            if force:
                raise
            self.log.warning("could not update the job record: %s", exc)

    async def _balance(self) -> float | None:
        """The account's images available, when this process can ask (the API engine, a
        key at hand); ``None`` otherwise."""
        if self.p.engine != "photoroom":
            return None
        from .._client import AsyncPhotoroomClient

        key: str | None = None
        try:
            key = await resolve_api_key(self.p.api_key_secret)
            if not key:
                return None
            async with AsyncPhotoroomClient(api_key=key, max_retries=1) as client:
                return (await client.account()).images_available
        except AuthenticationError as exc:
            # the Secret block's key is every shard's key: a refusal here is theirs too
            # (sandbox keys may not see the account: their refusal proves nothing)
            if self.p.api_key_secret and key and not key.startswith("sandbox_"):
                self.refused = (
                    f"the key in Secret block {self.p.api_key_secret!r} is refused: {exc}"
                )
            self.log.info("account balance not available: %s", exc)
            return None
        except PhotoroomBGError as exc:
            self.log.info("account balance not available: %s", exc)
            return None
