"""The ``remove_shard`` task: one slice of a job's sources through :class:`BatchRemover`.

A shard keeps its manifest in the sink (``BatchRemover(manifest_key=...)``) and skips stored
outputs, so running it again (a task retry, a duplicate delivery, a resumed job) never calls
Photoroom for an image it already paid for. While it runs it beats: every ``heartbeat``
seconds it reads the job's control record (a stop request, a newer attempt) and its own
record (a newer copy of itself), then writes its progress. The flow reads those beats to tell
a live shard from one whose worker died.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

import anyio
import attrs

from .._logs import SafeLogger, get_logger
from .._retry import RetryPolicy
from ..batch import BatchRemover
from ..errors import (
    APIConnectionError,
    BucketNotFoundError,
    ConfigurationError,
    PhotoroomBGError,
    ServerError,
    StorageAuthError,
    StorageError,
    StorageFullError,
    UnsafeKeyError,
)
from ._engine import RateLimitedEngine
from ._environment import open_worker_sink, worker_reader
from ._jobstore import JobStore
from ._options import options_from_dict
from ._secrets import resolve_api_key
from ._summary import ShardOutcome, ShardSummary, shard_summary, unstarted_summary

if TYPE_CHECKING:
    from typing import TypeAlias

    from prefect.client.schemas.objects import State, TaskRun
    from prefect.tasks import Task

    from ..engines import Engine

    #: where a shard logs: Prefect's run logger in a task run, the package's own elsewhere
    _Log: TypeAlias = logging.Logger | logging.LoggerAdapter[logging.Logger] | SafeLogger

__all__ = ["ShardStopped", "build_engine", "run_shard", "should_retry"]

logger = get_logger("photoroom_bg.prefect")

# a shard failing with one of these is not helped by running it again
_PERMANENT_STORAGE = (StorageAuthError, BucketNotFoundError, StorageFullError, UnsafeKeyError)


class ShardStopped(PhotoroomBGError):
    """A shard met an error that stops its whole job (out of credits, a refused key, a sink
    that cannot take outputs); every other shard of the job is asked to stop too."""


def should_retry(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """The ``retry_condition_fn`` of ``remove_shard``: retry only what a retry can fix.

    Yes for transient storage errors, connection errors and server errors (the shard's
    manifest and the sink make the rerun skip what is stored); no for configuration,
    validation, a stopped job, a refused key or a missing bucket.
    """
    error = state.data if isinstance(state.data, BaseException) else None
    if isinstance(error, (ShardStopped, ConfigurationError, *_PERMANENT_STORAGE)):
        return False
    if isinstance(error, (StorageError, APIConnectionError, ServerError)):
        return True
    # the Prefect API or the sink's transport hiccuped outside the SDK's error tree
    import httpx

    return isinstance(error, (OSError, TimeoutError, httpx.TransportError))


def build_engine(
    name: str, api_key: str | None, rate_limit: str | None, call_timeout: float | None = None
) -> Engine:
    """The engine a shard uses: ``"photoroom"`` (the API, with the fleet rate limit when
    ``rate_limit`` names one, and each call's ``call_timeout`` in seconds; ``None``: the worker's
    ``$PHOTOROOM_TIMEOUT``, else 120 s) or ``"local"`` / ``"local:<model>"`` (offline, never
    limited).

    Raises:
        ConfigurationError: an unknown engine name, or the API without a key.
    """
    if name == "photoroom":
        from ..engines import PhotoroomEngine

        if not api_key:
            raise ConfigurationError(
                "no Photoroom API key on this worker: pass api_key_secret (the name of a "
                "Prefect Secret block) or set PHOTOROOM_API_KEY in the worker's environment"
            )
        # the batch retries what was not billed; the client must not retry underneath it
        given: dict[str, Any] = {} if call_timeout is None else {"timeout": call_timeout}
        engine: Engine = PhotoroomEngine(api_key=api_key, max_retries=0, **given)
        return RateLimitedEngine(engine, rate_limit) if rate_limit else engine
    if name == "local" or name.startswith("local:"):
        from ..engines import LocalEngine

        model = name.partition(":")[2] or "u2netp"
        return LocalEngine(model)
    raise ConfigurationError(
        f"unknown engine {name!r}: use 'photoroom', 'local' or 'local:<model>'"
    )


def _run_logger() -> _Log:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # called outside a task run (tests, direct use)
        return logger


def _fields(value: object) -> dict[str, Any]:
    return attrs.asdict(cast(Any, value)) if attrs.has(type(value)) else dict(vars(value))


async def run_shard(
    sources: list[str],
    sink: str,
    *,
    job_id: str,
    shard: int,
    lease: str,
    attempt: str | None = None,
    options: dict[str, Any] | None = None,
    concurrency: int = 8,
    engine: str = "photoroom",
    api_key_secret: str | None = None,
    rate_limit: str | None = None,
    requests_per_minute: float | None = None,
    heartbeat: float = 5.0,
    max_failures: int = 20,
    max_retries: int = 5,
    retry_backoff: float = 0.5,
    retry_possibly_billed: bool = True,
    max_source_bytes: int | None = None,
    call_timeout: float | None = None,
    task_run_id: str | None = None,
) -> tuple[ShardSummary, str | None]:
    """Process one shard; return its summary and, when it did not run to its end, why
    (``None`` for a completed shard). The body of ``remove_shard``, callable on its own.

    Raises:
        ShardStopped: this shard met a 402, 401/403 or lost storage; the job was asked to
            stop (the summary is in the shard's record).
        ConfigurationError, ValidationError: bad options, engine, key or sink.
        StorageError: the sink failed (retried by the task when transient).
    """
    run_logger = _run_logger()
    parsed = options_from_dict(options)  # a bad option fails before anything is opened
    sink_obj = open_worker_sink(sink)
    leave_open = False  # True when the batch outlives the task: it uses the sink at exit
    store = JobStore(sink_obj, job_id)
    try:
        control = await store.control()
        record = await store.read_shard(shard)
        reason: str | None = None
        outcome: ShardOutcome = "completed"
        if attempt is not None and control.attempt not in (None, attempt):
            reason, outcome = "a newer attempt of the job took over", "superseded"
        elif record is not None and record.get("lease") not in (None, lease):
            reason, outcome = "a newer copy of this shard took over", "superseded"
        elif control.stop is not None:
            reason, outcome = control.stop, "cancelled"
        if reason is not None:  # nothing processed, nothing billed
            run_logger.info("shard %d not started: %s", shard, reason)
            summary = unstarted_summary(
                job_id=job_id, shard=shard, size=len(sources), outcome=outcome, reason=reason
            )
            if outcome == "cancelled":
                await store.write_shard(shard, _record(lease, attempt, task_run_id, summary))
            return summary, reason

        api_key = await resolve_api_key(api_key_secret) if engine == "photoroom" else None
        engine_obj = build_engine(engine, api_key, rate_limit, call_timeout)
        reader = worker_reader(max_source_bytes)
        base = {
            "lease": lease,
            "attempt": attempt,
            "task_run_id": task_run_id,
            "size": len(sources),
        }
        handle: Any = None
        try:
            remover = BatchRemover(
                engine_obj,
                sink=sink_obj,
                options=parsed,
                concurrency=concurrency,
                requests_per_minute=None if rate_limit else requests_per_minute,
                max_retries=max_retries,
                retry_policy=RetryPolicy(
                    initial_delay=retry_backoff, retry_possibly_billed=retry_possibly_billed
                ),
                manifest_key=store.manifest_key(shard),
                reader=reader,
                keep_results=max(1, max_failures),
                track_credits=False,  # shards share an account: the flow measures the balance
            )
            await store.write_shard(shard, {**base, "state": "running", "beat": 0})
            beat = _Beat(store, shard, base, attempt, heartbeat, run_logger)
            handle = remover.submit(sources)
            report, ours = await beat.watch(handle)
        finally:
            if _still_running(handle, run_logger, shard):
                # the task ended before the batch (the worker stopping, or a task timeout
                # with calls that outlast the drain): what the batch uses stays open until it
                # ends, as closing it now would drop calls that are paid for
                leave_open = True
                _close_when_done(handle, engine_obj, reader, sink_obj)
            else:
                with anyio.CancelScope(shield=True):  # closed however the task ends
                    await engine_obj.aclose()
                    await reader.aclose()
        if beat.superseded:
            summary = shard_summary(
                report,
                job_id=job_id,
                shard=shard,
                size=len(sources),
                outcome="superseded",
                manifest_key=store.manifest_key(shard),
                max_failures=max_failures,
            )
            return summary, ours
        stop_reason = getattr(report, "stop_reason", None)
        if ours is not None:
            outcome, reason = "cancelled", ours
        elif stop_reason is not None:
            outcome, reason = "stopped", stop_reason
        summary = shard_summary(
            report,
            job_id=job_id,
            shard=shard,
            size=len(sources),
            outcome=outcome,
            manifest_key=store.manifest_key(shard),
            max_failures=max_failures,
        )
        if outcome == "stopped":
            assert reason is not None
            await store.request_stop(f"shard {shard}: {reason}", "stopped")
        await store.write_shard(shard, _record(lease, attempt, task_run_id, summary))
        run_logger.info(
            "shard %d %s: %d stored, %d failed, %d billed calls",
            shard,
            outcome,
            summary.count("stored_count"),
            summary.count("failed_count"),
            summary.count("billed_calls"),
        )
        if outcome == "stopped":
            raise ShardStopped(f"shard {shard} stopped the job: {reason}")
        return summary, reason
    finally:
        if not leave_open:
            with anyio.CancelScope(shield=True):
                await sink_obj.aclose()


def _still_running(
    handle: Any,
    log: _Log,
    shard: int,
) -> bool:
    """Whether the shard's batch is still running as its task ends (its worker stopping)."""
    if handle is None or handle.done():
        return False
    log.warning("shard %d: its task ended before its batch; the batch finishes at exit", shard)
    return True


#: Closers of shards whose task ended before their batch, kept until they have run.
_CLOSERS: set[asyncio.Task[None]] = set()


def _close_when_done(handle: Any, *resources: Any) -> None:
    """Close ``resources`` once the batch of ``handle`` has ended, on this event loop (where
    they were opened). On a worker that stays up after a task timeout this frees a shard's
    pool and sink client; on one that is exiting, the loop cancels the closer first and they
    stay open for the batch's exit hook, which stores the calls under way with them."""

    async def close() -> None:
        try:
            await handle
        except asyncio.CancelledError:
            return  # the loop is going away: the batch still needs them at exit
        except Exception:  # noqa: S110  its report or failure is the shard's, not ours
            pass
        for resource in resources:
            try:
                await resource.aclose()
            except Exception as exc:  # one that fails to close keeps no other open
                logger.warning("could not close %s: %s", type(resource).__name__, exc)

    task = asyncio.get_running_loop().create_task(close())
    _CLOSERS.add(task)
    task.add_done_callback(_CLOSERS.discard)


def _record(
    lease: str, attempt: str | None, task_run_id: str | None, summary: ShardSummary
) -> dict[str, Any]:
    return {
        "lease": lease,
        "attempt": attempt,
        "task_run_id": task_run_id,
        "size": summary.size,
        "state": summary.outcome,
        "summary": summary.to_dict(),
    }


#: How long a shard whose task is going away (its worker stopping) waits for its calls under
#: way to finish and be stored: they are paid for, and dropping them pays for them again.
DRAIN_SECONDS = 20.0


class _Beat:
    """Watches a submitted batch: beats, and stops it when the job or a newer copy says so."""

    def __init__(
        self,
        store: JobStore,
        shard: int,
        base: dict[str, Any],
        attempt: str | None,
        interval: float,
        log: _Log,
    ) -> None:
        self.store = store
        self.shard = shard
        self.base = base
        self.attempt = attempt
        self.interval = max(0.05, interval)
        self.log = log
        self.beats = 0
        self.superseded = False
        self.cancel_reason: str | None = None

    async def watch(self, handle: Any) -> tuple[Any, str | None]:
        """Beat until the batch ends; return its report and the reason we cancelled it."""
        waiter = asyncio.ensure_future(_report_of(handle))
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=self.interval)
                if done:
                    return waiter.result(), self.cancel_reason
                await self._beat(handle)
        except BaseException:
            # the task itself is going away (cancelled, timed out, its worker stopping on
            # SIGTERM): start no more jobs, let the running ones finish and the manifest
            # reach the sink. Shielded from the cancel scope that is ending the task (anyio's
            # scopes cancel again at every await: asyncio.shield alone let the calls under
            # way drop), for at most DRAIN_SECONDS.
            handle.cancel("the shard task was interrupted")
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + DRAIN_SECONDS
                await asyncio.wait({waiter})
            raise

    def _cancel(self, handle: Any, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self.log.info("shard %d stopping: %s", self.shard, reason)
            handle.cancel(reason)

    async def _beat(self, handle: Any) -> None:
        try:
            control = await self.store.control()
            if self.attempt is not None and control.attempt not in (None, self.attempt):
                self._cancel(handle, "a newer attempt of the job took over")
            elif control.stop is not None:
                self._cancel(handle, control.stop)
            record = await self.store.read_shard(self.shard)
            if record is not None and record.get("lease") != self.base["lease"]:
                self.superseded = True
                self._cancel(handle, "a newer copy of this shard took over")
            if self.superseded:
                return
            self.beats += 1
            progress = _fields(handle.progress)
            await self.store.write_shard(
                self.shard,
                {**self.base, "state": "running", "beat": self.beats, "progress": progress},
            )
        except (StorageError, OSError) as exc:
            # a missed beat is not worth failing the shard for; many in a row get it
            # declared lost by the flow, and a newer copy takes over
            self.log.warning("shard %d could not beat: %s", self.shard, exc)


async def _report_of(handle: Any) -> Any:
    return await handle
