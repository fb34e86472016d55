"""The coordinator of one attempt of a job: dispatches shards, watches them, adds them up.

It keeps at most ``max_running_shards`` shards in flight, as tasks of the flow's task runner or
deferred to ``prefect task serve`` workers, and watches them through their records in the
sink and their Prefect states:

- a shard whose worker died (no heartbeat for ``heartbeat_timeout`` seconds while Prefect
  still says it runs) is marked ``Crashed`` and given to another worker; the new copy skips
  what the lost one stored. So is one whose worker was stopped (SIGTERM: Prefect marks its
  task run ``Crashed`` at once), and the shards either worker had taken ahead of its limit;
- a stop request (a 402 or 401/403 in any shard, a lost sink, a cancel) ends dispatching;
  shards not started are cancelled without calling Photoroom, running ones stop at their
  next beat;
- a shard that wrote its final record but whose task run Prefect still shows running (its
  worker died between the two) is marked ended for it once ``heartbeat_timeout`` has passed,
  so that no task run of a finished job stays "running" for ever.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import anyio
import attrs
from prefect import get_run_logger
from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Completed, Crashed, Failed

from .._logs import get_logger
from ..batch import _run
from ..batch._claims import stored_under
from ..errors import AuthenticationError, PhotoroomBGError
from ..sources import SourceReader, UnlistedSource, iter_sources
from ._artifacts import publish_artifacts
from ._engine import ensure_rate_limit
from ._environment import open_worker_sink, worker_reader
from ._jobstore import JobStore
from ._parameters import JobParameters
from ._secrets import resolve_api_key
from ._summary import RunSummary, RunTotals, ShardSummary, unstarted_summary

__all__ = ["Coordinator"]

logger = get_logger("photoroom_bg.prefect")

_MAX_RESUBMITS = 3
_FINAL_RECORDS = frozenset({"completed", "stopped", "cancelled"})
_UNSEEN = object()


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


@attrs.define
class _Unreported:
    """A shard ended by its record whose task run had not ended yet in Prefect."""

    shard: int
    task_run_id: Any
    outcome: str
    since: float


class Coordinator:
    """One attempt of a job: dispatches shards, watches them, adds them up.

    Args:
        params: the job.
        attempt: this attempt's token (flow run id and run count).
        flow_run_id: the flow run coordinating.
        shard_task: the ``remove_shard`` task (submitted, or deferred with ``.delay()``).
    """

    def __init__(
        self, params: JobParameters, attempt: str, flow_run_id: str, shard_task: Any
    ) -> None:
        assert params.job_id is not None
        self.p = params
        self.job_id = params.job_id
        self.attempt = attempt
        self.flow_run_id = flow_run_id
        self.totals = RunTotals(max_failures=params.max_failures)
        self.flights: dict[int, _Flight] = {}
        # task run id -> a shard whose final record came before its task run's end
        self.unreported: dict[str, _Unreported] = {}
        self.stopping = False
        self.cancelled = False
        self.dispatched = 0
        self._seq = 0
        # shards queued before a worker was lost or stopped (by seq): one of them that
        # stays waiting while a later one has started may be held by that worker
        self._suspect_upto = 0
        self.heartbeat = max(0.2, params.heartbeat_timeout / 6)
        self.poll = min(0.5, max(0.1, params.heartbeat_timeout / 20))
        self._last_job_write = 0.0
        self.log: Any = logger
        self.refused: str | None = None
        self.shard_task = shard_task

    async def run(self) -> RunSummary:
        from prefect.client.orchestration import get_client

        self.log = get_run_logger()
        started = time.monotonic()
        sink = open_worker_sink(self.p.sink)
        self.sink = sink
        self.store = JobStore(sink, self.job_id)
        reader = worker_reader(self.p.max_source_bytes)
        try:
            control = await self.store.start_attempt(self.attempt, self.flow_run_id)
            await self.store.write(self.store.parameters_key, self.p.flow_parameters())
            await self._write_job("running", force=True)
            if self.p.requests_per_minute and self.p.limit_name:
                await ensure_rate_limit(self.p.limit_name, self.p.requests_per_minute)
            balance = await self._balance()
            if control.stop is not None:  # cancelled before it began
                await self._stop(control.stop, control.kind or "cancelled")
            elif self.refused is not None:  # every shard would meet the same 401/403
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
        # the outputs are no inputs: a job run again never lists them (see iter_sources)
        stored = stored_under(self.sink, reader.s3_endpoint)
        leave_out = [stored] if stored is not None else []
        async for source in iter_sources(self.p.sources, reader=reader, leave_out=leave_out):
            if isinstance(source, UnlistedSource):  # a job's sources all list, or it stops
                raise source.error
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
                batch: list[tuple[int, list[str]]] = []
                while (
                    not self.stopping
                    and not listed_all
                    and len(self.flights) + len(batch) < self.p.max_running_shards
                ):
                    if pending is None:
                        pending = await self._next_shard(shards)
                        if pending is None:
                            listed_all = True
                            break
                    batch.append((self.dispatched, pending))
                    self.dispatched += 1
                    pending = None
                # creating a deferred task run is a few round trips: make them side by side
                await asyncio.gather(*(self._submit(i, s, resubmits=0) for i, s in batch))
                if not self.flights and not self.unreported and (listed_all or self.stopping):
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
        except Exception as exc:  # a missing bucket, a folder that is not there...
            message = (
                str(exc) if isinstance(exc, PhotoroomBGError) else f"{type(exc).__name__}: {exc}"
            )
            await self._stop(f"could not list the sources: {message}", "stopped")
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
            "max_retries": self.p.max_retries,
            "retry_backoff": self.p.retry_backoff,
            "retry_possibly_billed": self.p.retry_possibly_billed,
            "max_source_bytes": self.p.max_source_bytes,
            "call_timeout": self.p.call_timeout,
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
            future = await asyncio.to_thread(self.shard_task.delay, **params)
        else:
            future = self.shard_task.submit(**params)
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
        stopped: list[tuple[_Flight, str]] = []  # and why its worker stopped it
        for flight, record in zip(flights, records, strict=True):
            mine = record is not None and record.get("lease") == flight.lease
            state = states.get(str(flight.task_run_id))
            if mine and record is not None and record.get("state") in _FINAL_RECORDS:
                summary = record.get("summary")
                if summary:
                    self._finish(flight, ShardSummary.from_dict(summary))
                    if self.p.deferred and (state is None or not state.is_final()):
                        # its worker reports the end in a moment, unless it died between
                        # the record and the report: watched below until then
                        outcome = str(record["state"])
                        self.unreported[str(flight.task_run_id)] = _Unreported(
                            flight.shard, flight.task_run_id, outcome, now
                        )
                    continue
            if state is not None and state.type == StateType.CRASHED and not self.stopping:
                # the runtime, not the shard, ended it: its worker was stopped (SIGTERM on a
                # scale-down or a deploy) or died. As for a worker lost without a word,
                # another one takes it over and skips what this one stored.
                stopped.append((flight, state.message or "its task run crashed"))
                flight.started = True  # what its worker took ahead of it is stranded too
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
        if lost or stopped:
            self._suspect_upto = self._seq
        # checked at every poll after a loss: a shard the lost worker took ahead of its limit
        # looks stranded only once a later shard has started, which may be polls later
        stranded = self._stranded()  # before the replacements: they leave self.flights
        for flight, why in stopped:
            await self._replace(flight, f"its worker stopped it: {why}", crashed=True, mark=False)
        for flight in lost:
            await self._replace(
                flight,
                f"no heartbeat for {self.p.heartbeat_timeout:g} s: its worker was lost",
                crashed=True,
            )
        for flight in stranded:  # never started, so neither lost nor stopped
            if flight.shard in self.flights:
                await self._replace(
                    flight, "its worker may have been lost before it started", crashed=False
                )
        await self._settle(states, now)
        await self._write_job("running")

    async def _settle(self, states: dict[str, State[Any]], now: float) -> None:
        """End, in Prefect, the task runs of finished shards that their workers never
        reported ended (they died between the shard's final record and the report)."""
        for run_id, shard in list(self.unreported.items()):
            state = states.get(run_id)
            if state is not None and state.is_final():
                del self.unreported[run_id]
            elif now - shard.since > self.p.heartbeat_timeout:
                del self.unreported[run_id]
                message = (
                    f"shard {shard.shard} ended {shard.outcome} (its record in the sink "
                    "holds its summary), but its worker was lost before reporting it"
                )
                self.log.warning("%s", message)
                ended: State[Any] = (
                    Failed(message=message)
                    if shard.outcome == "stopped"
                    else Completed(message=message)
                )
                await self._mark(shard.task_run_id, ended, shard.shard)

    async def _mark(self, task_run_id: Any, state: State[Any], shard: int) -> None:
        """Set a shard's task run's state in Prefect; a failure is logged: the job goes on
        either way (the shard is replaced, counted or cancelled all the same)."""
        try:
            await self.client.set_task_run_state(task_run_id, state, force=True)
        except Exception as exc:
            self.log.warning(
                "could not mark shard %d's task run %s: %s", shard, state.type.value, exc
            )

    async def _states(self, flights: list[_Flight]) -> dict[str, State[Any]]:
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

        ids = [f.task_run_id for f in flights] + [u.task_run_id for u in self.unreported.values()]
        if not ids:
            return {}
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
        return [
            f
            for f in self.flights.values()
            if not f.started and f.seq < newest and f.seq <= self._suspect_upto
        ]

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

    async def _replace(
        self, flight: _Flight, reason: str, *, crashed: bool, mark: bool = True
    ) -> None:
        """Mark a shard's task run as ended (unless ``mark=False``: it ended already) and
        give the shard to another worker."""
        self.log.warning("shard %d: %s", flight.shard, reason)
        self.flights.pop(flight.shard, None)
        state: State[Any] = Crashed(message=reason) if crashed else Cancelled(message=reason)
        if mark:
            await self._mark(flight.task_run_id, state, flight.shard)
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
            cancelled: State[Any] = Cancelled(message=f"job stopped: {reason}")
            await self._mark(flight.task_run_id, cancelled, flight.shard)
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
                with anyio.fail_after(_run.BALANCE_WAIT):  # an extra: it holds no job back
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
        except TimeoutError:
            self.log.warning(
                "account balance did not come within %g s: credits_spent is not reported",
                _run.BALANCE_WAIT,
            )
            return None
