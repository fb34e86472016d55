"""One run of a BatchRemover: a task group that owns the lister, the workers, the manifest
writer and every resource the run opened, and ends them all through one place."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import attrs
import httpx
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._client import AsyncPhotoroomClient
from .._keys import content_digest
from .._retry import RetryPolicy, is_retryable
from ..engines._base import Engine, check_engine_options
from ..errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BucketNotFoundError,
    ConfigurationError,
    ObjectNotFoundError,
    OutOfCreditsError,
    PhotoroomBGError,
    RateLimitError,
    SourceError,
    StorageAuthError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
    UnexpectedError,
    UnsafeKeyError,
)
from ..sinks import FileSystemSink, Sink, StoredObject
from ..sinks._common import check_key
from ..sources import ImageSource, SourceReader, SourceSpec, iter_sources
from ._handle import BatchHandle
from ._jobs import BatchReport, JobResult, JobStatus
from ._limiter import AdaptiveLimit, RateGate
from ._manifest import Manifest, ManifestState, read_manifest, replayable_sources

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport there
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from ._remover import BatchRemover

__all__ = ["Batch"]

logger = logging.getLogger("photoroom_bg.batch")

T = TypeVar("T")

# a wrong key, an empty account: every further call would fail the same way
_STOPPING_ERRORS = (OutOfCreditsError, AuthenticationError)
# the sink cannot take any output: every later job would pay for a cut-out it cannot keep
_STOPPING_STORAGE_ERRORS = (StorageFullError, StorageAuthError, BucketNotFoundError)
_PROBE_KEY = ".photoroom-bg-probe"
_EXTENSIONS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp", "avif": "avif"}


def _extension(options: Any) -> str:
    from ..options import SegmentOptions

    if isinstance(options, SegmentOptions):
        return "png" if options.channels == "alpha" else _EXTENSIONS[options.format]
    return _EXTENSIONS[getattr(options, "export_format", None) or "png"]


class _Stopped(Exception):
    """The batch stopped while this job waited (for the budget, a retry, a duplicate...)."""

    def __init__(self, reason: str, attempts: int = 0, possibly: int = 0) -> None:
        super().__init__(reason)
        self.attempts = attempts
        self.possibly = possibly


@attrs.frozen
class _Unstored:
    """A paid cut-out the sink did not take: kept in the spill folder (or, failing that,
    lost), and why."""

    status: JobStatus
    output: Any
    error: StorageError
    reason: str | None = None

    def fields(self) -> dict[str, Any]:
        return {"output": self.output, "error": self.error, "reason": self.reason}


class _EngineFailed(Exception):
    def __init__(self, error: PhotoroomBGError, attempts: int, possibly: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts
        self.possibly = possibly


@attrs.define
class _Job:
    """One job's identity and the fields of its result, gathered as it goes."""

    index: int
    source: ImageSource
    started: float
    batch: Batch
    fields: dict[str, Any] = attrs.field(factory=dict)

    def done(self, status: JobStatus, **fields: Any) -> JobResult:
        return self.batch._result(
            self.index,
            self.source,
            status,
            duration=time.monotonic() - self.started,
            **{**self.fields, **fields},
        )


# an output stored by a sink that cannot describe it cheaply
_STORED_SOMEWHERE = object()


@attrs.define
class _InFlight:
    """A job whose content (+ options + engine) another job may be waiting for."""

    index: int
    key: str
    done: anyio.Event = attrs.field(factory=anyio.Event)
    waiters: int = 0
    output: Any = None  # StoredObject once stored
    content: tuple[bytes, str] | None = None  # kept only while duplicates wait


class Batch:
    """One run of a :class:`~photoroom_bg.BatchRemover` over some sources.

    :meth:`open` makes everything the run needs and raises a typed error (before anything is
    billed) when it cannot; :meth:`process` runs the jobs in one task group and always closes
    what :meth:`open` made.
    """

    def __init__(
        self,
        remover: BatchRemover,
        spec: SourceSpec,
        handle: BatchHandle,
        *,
        retry: bool = False,
        bar: Any = None,
    ) -> None:
        self.r = remover
        self.spec = spec
        self.handle = handle
        self.retry = retry
        self.bar = bar
        self.stop_reason: str | None = None
        self.billed_calls = 0
        self.possibly_billed_calls = 0
        self.possibly_billed_twice = 0
        self.listing_error: str | None = None
        self._resources = contextlib.AsyncExitStack()
        self._waiting: set[anyio.CancelScope] = set()
        self._inflight: dict[str, _InFlight] = {}
        self._finished_keys: set[str] = set()
        self._state = ManifestState()
        self._api_answered = False
        self._unreachable: set[int] = set()
        self._total: int | None = None
        self._sink_ok = anyio.Event()
        self._sink_ok.set()
        self._sink_gone: StorageError | None = None
        self._outage_since: float | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._started = time.monotonic()
        self._account_before: float | None = None
        self._manifest: Manifest | None = None
        self._manifest_path: str | os.PathLike[str] | None = None
        self._spool: str | None = None
        self._earlier = b""
        self._offset = 0
        self._opened = False
        self._kept = None if remover.keep_results is True else int(remover.keep_results)
        self._failures: dict[str, deque[JobResult]] = defaultdict(lambda: deque(maxlen=self._kept))
        self._failure_counts: Counter[str] = Counter()

    # -- stopping --------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Start no new billed request (called on the batch's loop): jobs not started, and
        jobs waiting for the budget, to retry or for a duplicate, end ``cancelled``."""
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        self.handle._stopping()
        logger.info("batch stopping: %s", reason)
        for scope in list(self._waiting):
            scope.cancel()
        if self.bar is not None:
            self.bar.set_description("stopped", refresh=False)

    async def _stoppable(self, wait: Callable[[], Awaitable[T]]) -> T:
        """Await ``wait()``; raise :class:`_Stopped` if the batch stops meanwhile."""
        if self.stop_reason is not None:
            raise _Stopped(self.stop_reason)
        with anyio.CancelScope() as scope:
            self._waiting.add(scope)
            try:
                return await wait()
            finally:
                self._waiting.discard(scope)
        raise _Stopped(self.stop_reason or "stopped")

    # -- opening ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Make the engine, reader and manifest, read what earlier runs stored, and check the
        sink answers. On failure everything made so far is closed and the error raised."""
        try:
            await self._open()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close()
            raise
        self._opened = True

    async def _open(self) -> None:
        r = self.r
        self.engine = self._make_engine()
        check_engine_options(self.engine, r.options)  # refused now, not once per image
        self.sink: Sink = r.sink
        self.reader = r.reader or SourceReader()
        if r.reader is None:
            self._resources.push_async_callback(self.reader.aclose)
        self.spill = FileSystemSink(r.spill_dir)
        self.policy: RetryPolicy = r._retry_policy()
        self._manifest_path = r.manifest
        if self._manifest_path is None and r.manifest_key is not None:
            fd, self._spool = tempfile.mkstemp(prefix="photoroom-bg-manifest-", suffix=".jsonl")
            os.close(fd)
            self._manifest_path = self._spool
        if self._manifest_path is not None:
            self._manifest = Manifest(self._manifest_path)
            await anyio.to_thread.run_sync(self._manifest.open)
            self._resources.callback(self._manifest.close)
            self._state = await anyio.to_thread.run_sync(read_manifest, self._manifest_path)
            self._offset = await anyio.to_thread.run_sync(_size, self._manifest_path)
        try:
            if r.manifest_key is not None:  # also proves the sink answers
                self._earlier = await _read_optional(self.sink, r.manifest_key)
                self._state.feed(self._earlier.split(b"\n"))
            else:
                await self.sink.exists(_PROBE_KEY)
        except StorageError as exc:
            raise type(exc)(f"the sink is not usable: {exc}") from exc
        self._finished_keys = set(self._state.finished)
        if self._manifest is not None:
            await self._manifest.write_header(
                replayable_sources(self.spec),
                engine=self.engine.name,
                options_digest=r._options_digest,
                retry=self.retry,
            )
        billed = self.engine.bills
        # a budget for the API; a local model has no one to be polite to
        self.gate = RateGate(r.requests_per_minute if billed else None)
        self.limit = AdaptiveLimit(r.concurrency)
        if r.track_credits:
            self._account_before = await self._account()

    def _make_engine(self) -> Engine:
        from .. import _loop
        from ..engines.photoroom import PhotoroomEngine

        given = self.r.engine
        if given is None:
            made = PhotoroomEngine(
                api_key=self.r._api_key, base_url=self.r._base_url, max_retries=0
            )
            self._resources.push_async_callback(made.aclose)
            return made
        engine = given if isinstance(given, PhotoroomEngine) else None
        client = given.client if isinstance(given, PhotoroomEngine) else given
        if not isinstance(client, AsyncPhotoroomClient):
            assert not isinstance(given, AsyncPhotoroomClient)
            return given  # the caller's own engine: theirs to close
        if not _loop.in_background_loop():
            # run() on the caller's loop: the caller's pool works here; retries are ours
            own = client.with_options(max_retries=0)
        elif client._owns_http:
            # submit() runs on the background loop, and a pooled connection opened on the
            # caller's loop cannot be used here: same settings, a pool of the batch's own
            own = client._copy_with_own_pool(max_retries=0)
            self._resources.push_async_callback(own.aclose)
        else:
            raise ConfigurationError(
                "this AsyncPhotoroomClient uses your own http_client, whose connections belong "
                "to your event loop: use `await remover.run(...)` on that loop, or give the "
                "client no http_client so that submit() can make a pool of its own"
            )
        if engine is None:
            return PhotoroomEngine(own)
        return engine._with_client(own)  # keeps the caller's subclass and its overrides

    async def _account(self) -> float | None:
        client = getattr(self.engine, "client", None)
        if not self.engine.bills or not isinstance(client, AsyncPhotoroomClient):
            return None
        try:
            return (await client.account(max_retries=1)).images_available
        except PhotoroomBGError:
            return None

    # -- running ---------------------------------------------------------------------------

    async def process(self) -> BatchReport:
        """Run every job; close everything :meth:`open` made, however it ends."""
        if not self._opened:
            await self.open()
        try:
            send, receive = anyio.create_memory_object_stream[tuple[int, ImageSource]](
                self.r.concurrency
            )
            async with _one_error(), anyio.create_task_group() as tg:
                self._tg = tg
                if self._manifest is not None:
                    tg.start_soon(self._manifest.writer)
                async with anyio.create_task_group() as jobs:
                    jobs.start_soon(self._list, send)
                    async with receive:
                        for _ in range(self.r.concurrency):
                            jobs.start_soon(self._work, receive.clone())
                if self._manifest is not None:
                    self._manifest.finish()
                tg.cancel_scope.cancel()  # the outage prober, if one is still waiting
            account_after = await self._account() if self._account_before is not None else None
        finally:
            with anyio.CancelScope(shield=True):
                if self.bar is not None:
                    self.bar.close()
                await self._close()
        return self._report(account_after)

    async def _close(self) -> None:
        try:
            await self._resources.aclose()
        finally:
            if self.r.manifest_key is not None and self._manifest_path is not None:
                await self._upload_manifest()

    def _report(self, account_after: float | None) -> BatchReport:
        spent = None
        if self._account_before is not None and account_after is not None:
            spent = round(self._account_before - account_after, 4)
        counts = self.handle._status_counts()
        succeeded, skipped = counts[JobStatus.SUCCEEDED], counts[JobStatus.SKIPPED]
        report = BatchReport(
            total_count=self._total or 0,
            stored_count=succeeded + skipped,
            succeeded_count=succeeded,
            skipped_count=skipped,
            spilled_count=counts[JobStatus.SPILLED],
            failed_count=counts[JobStatus.FAILED],
            cancelled_count=counts[JobStatus.CANCELLED],
            failures={k: tuple(v) for k, v in self._failures.items()},
            failure_counts=dict(self._failure_counts),
            billed_calls=self.billed_calls,
            possibly_billed_calls=self.possibly_billed_calls,
            possibly_billed_twice=self.possibly_billed_twice,
            credits_spent=spent,
            stop_reason=self.stop_reason,
            listing_error=self.listing_error,
            duration=time.monotonic() - self._started,
        )
        self.handle._finish(report)
        return report

    async def _list(self, send: MemoryObjectSendStream[tuple[int, ImageSource]]) -> None:
        # Collections (lists, paths, folders) are listed to the end so that every input left
        # over after a stop is reported as cancelled; one-shot iterators are not drained.
        one_shot = not isinstance(self.spec, (str, bytes, os.PathLike, Collection))
        total = 0
        async with send:
            try:
                async for source in iter_sources(self.spec, reader=self.reader):
                    if self.stop_reason is not None and one_shot:
                        break  # a generator may never end: stop pulling from it
                    self.handle._source_seen()
                    await send.send((total, source))
                    total += 1
            except Exception as exc:  # the listing ends; what it listed is processed
                error = _typed(exc, SourceError, "listing the sources")
                self.listing_error = f"{type(error).__name__}: {error}"
                logger.error("listing the sources stopped after %d: %s", total, error)
            finally:
                self._total = total
                self.handle._sources_done()
                if self.bar is not None:
                    self.bar.total = total
                    self.bar.refresh()

    async def _work(self, receive: MemoryObjectReceiveStream[tuple[int, ImageSource]]) -> None:
        async with receive:
            async for index, source in receive:
                running = self.stop_reason is None
                if running:
                    self.handle._job_started()
                    try:
                        result = await self._job(index, source)
                    except Exception as exc:  # one job's surprise must not end the batch
                        logger.error(
                            "job %d (%s) failed unexpectedly", index, _display(source), exc_info=exc
                        )
                        result = self._result(
                            index, source, JobStatus.FAILED, error=_typed(exc, UnexpectedError)
                        )
                else:
                    result = self._result(
                        index, source, JobStatus.CANCELLED, reason=self.stop_reason
                    )
                self._record(result, source, running)

    def _result(
        self, index: int, source: ImageSource, status: JobStatus, **fields: Any
    ) -> JobResult:
        return JobResult(index, _display(source), _name(source), status, **fields)

    def _record(self, result: JobResult, source: ImageSource, running: bool) -> None:
        if result.error is not None:
            _lighten(result.error)  # no input bytes kept through the error
        if result.status is JobStatus.FAILED:
            name = result.error_type or "Error"
            self._failures[name].append(result)
            self._failure_counts[name] += 1
        if self._manifest is not None:
            self._manifest.write(
                result, engine=self.engine.name, options_digest=self.r._options_digest
            )
        self.handle._job_finished(result, source, running)
        self._notify(result)

    def _notify(self, result: JobResult) -> None:
        if self.bar is not None:
            p = self.handle.progress
            if result.status is not JobStatus.CANCELLED:
                self.bar.update(1)
            self.bar.set_postfix(
                made=p.succeeded, skipped=p.skipped, failed=p.failed,
                **({"spilled": p.spilled} if p.spilled else {}),
                **({"cancelled": p.cancelled} if p.cancelled else {}),
                refresh=False,
            )  # fmt: skip
        try:
            if self.r.on_result is not None:
                self.r.on_result(result)
            if self.r.on_progress is not None:
                self.r.on_progress(self.handle.progress)
        except Exception:
            logger.exception("a batch callback failed; the batch goes on")

    # -- one job ---------------------------------------------------------------------------

    async def _job(self, index: int, source: ImageSource) -> JobResult:
        r = self.r
        job = _Job(index, source, time.monotonic(), self)
        passthrough = r.url_passthrough and source.kind == "url"
        try:
            data = b"" if passthrough else await self._stoppable(lambda: self.reader.read(source))
            digest = content_digest(source.location.encode() if passthrough else data)
            key = r.key_template.render(
                stem=source.name,
                content_digest=digest,
                options_digest=r._options_digest,
                ext=_extension(r.options),
                engine=self.engine.name,
            )
            check_key(key)  # a key no sink takes fails now, not after the engine is paid
        except _Stopped as stopped:
            return job.done(JobStatus.CANCELLED, reason=str(stopped))
        except PhotoroomBGError as exc:
            return job.done(JobStatus.FAILED, error=exc)
        job.fields.update(key=key, input_size=len(data))
        # what makes two inputs the same cut-out: content, options and engine
        identity = hashlib.sha256(f"{digest}:{r._options_digest}:{self.engine.name}".encode())
        try:
            return await self._deduplicated(job, key, identity.hexdigest(), data)
        except _Stopped as stopped:
            self.possibly_billed_calls += stopped.possibly
            job.fields.update(attempts=stopped.attempts, possibly_billed=stopped.possibly)
            return job.done(JobStatus.CANCELLED, reason=str(stopped))
        except StorageError as exc:
            self._stop_if_storage_is_gone(exc)
            return job.done(JobStatus.FAILED, error=exc)

    async def _deduplicated(self, job: _Job, key: str, identity: str, data: bytes) -> JobResult:
        """Make the cut-out, unless another job of this batch is making the same one: then
        wait for it, and reuse its output (the same key) or its bytes (another key)."""
        while (first := self._inflight.get(identity)) is not None:
            first.waiters += 1
            try:
                await self._stoppable(first.done.wait)
            finally:
                first.waiters -= 1
            if first.output is not None and first.key == key:
                reason = f"the same input as #{first.index}: stored once"
                return job.done(JobStatus.SKIPPED, output=first.output, reason=reason)
            if first.output is not None and first.content is not None:
                content, content_type = first.content
                reason = f"the same image as #{first.index}: its cut-out, stored again"
                return await self._keep(job, key, content, content_type, reason)
            # the first one failed: try it ourselves
        entry = self._inflight[identity] = _InFlight(job.index, key)
        try:
            result = await self._make(job, key, data, entry)
            if result.status in (JobStatus.SUCCEEDED, JobStatus.SKIPPED):
                entry.output = result.output or _STORED_SOMEWHERE
            return result
        finally:
            del self._inflight[identity]
            if entry.waiters == 0:
                entry.content = None
            entry.done.set()

    async def _make(self, job: _Job, key: str, data: bytes, entry: _InFlight) -> JobResult:
        if key in self._finished_keys:
            output = await self._describe(key)
            return job.done(JobStatus.SKIPPED, output=output, reason="output already stored")
        spilled = await self._from_spill(key)
        if spilled is not None:
            content, content_type = spilled
            reason = "made by an earlier run and kept in the spill folder: stored now"
            result = await self._keep(job, key, content, content_type, reason)
            if result.status is JobStatus.SUCCEEDED:
                await self._unspill(key)
            return result
        if self.r.skip_existing:
            found = await self._lookup(key)
            if found is not None:
                self._finished_keys.add(key)
                output = found if isinstance(found, StoredObject) else None
                return job.done(JobStatus.SKIPPED, output=output, reason="output already stored")
        try:
            made, attempts, possibly = await self._call_engine(data, job.source)
        except _EngineFailed as failed:
            self.possibly_billed_calls += failed.possibly
            job.fields.update(attempts=failed.attempts, possibly_billed=failed.possibly)
            if isinstance(failed.error, _STOPPING_ERRORS):
                self.stop(f"{type(failed.error).__name__}: {failed.error}")
            return job.done(JobStatus.FAILED, error=failed.error)
        billed = self.engine.bills
        if billed:
            self.billed_calls += 1
            if possibly:
                self.possibly_billed_twice += 1
        self.possibly_billed_calls += possibly
        job.fields.update(attempts=attempts, billed=billed, possibly_billed=possibly)
        if entry.waiters:  # a duplicate with another key waits for these bytes
            entry.content = (made.content, made.content_type)
        return await self._keep(job, key, made.content, made.content_type, None)

    async def _keep(
        self, job: _Job, key: str, content: bytes, content_type: str, reason: str | None
    ) -> JobResult:
        """Store a cut-out in hand and say how it ended."""
        stored = await self._store(key, content, content_type, job.source)
        job.fields["output_size"] = len(content)
        if isinstance(stored, _Unstored):
            return job.done(stored.status, **stored.fields())
        self._finished_keys.add(key)
        return job.done(JobStatus.SUCCEEDED, output=stored, reason=reason)

    async def _describe(self, key: str) -> Any:
        """The stored object's description, by a stat (never a download); ``None`` if the
        sink cannot tell cheaply."""
        stat = getattr(self.sink, "stat", None)
        if stat is None:
            return None
        try:
            return await stat(key)
        except PhotoroomBGError:
            return None

    async def _lookup(self, key: str) -> Any:
        """The stored object under ``key`` (``True`` if the sink cannot describe it), or
        ``None``; waits out a sink outage."""
        stat = getattr(self.sink, "stat", None)
        while True:
            await self._stoppable(self._sink_available)
            try:
                if stat is not None:
                    try:
                        return await stat(key)
                    except ObjectNotFoundError:
                        return None
                return True if await self.sink.exists(key) else None
            except StorageUnavailableError as exc:
                self._outage(exc)

    # -- the engine ------------------------------------------------------------------------

    async def _call_engine(self, data: bytes, source: ImageSource) -> tuple[Any, int, int]:
        """Call the engine with retries; return ``(result, attempts, possibly billed)``.

        Raises:
            _EngineFailed: a failure a retry cannot fix, or the retries ran out.
            _Stopped: the batch stopped before the next attempt was sent.
        """
        r, policy = self.r, self.policy
        delays = policy.delays()
        attempt = possibly = 0
        while True:
            try:
                await self._stoppable(self._take_turn)
            except _Stopped as stopped:
                raise _Stopped(str(stopped), attempt, possibly) from None
            attempt += 1
            try:
                if r.url_passthrough and source.kind == "url":
                    result = await self.engine.process_url(source.location, r.options)  # type: ignore[attr-defined]
                else:
                    result = await self.engine.process(data, r.options)
            except PhotoroomBGError as exc:
                self.limit.release()
                if getattr(exc, "possibly_billed", False):
                    possibly += 1
                wait = self._after_failure(exc, next(delays), source)
                if not is_retryable(exc, policy) or attempt > r.max_retries:
                    raise _EngineFailed(exc, attempt, possibly) from None
                logger.debug("retrying %s after %s (attempt %d)", _display(source), exc, attempt)
                try:
                    await self._stoppable(functools.partial(anyio.sleep, wait))
                except _Stopped as stopped:
                    raise _Stopped(str(stopped), attempt, possibly) from None
                continue
            except BaseException:
                self.limit.release()
                raise
            self.limit.release()
            self.limit.succeeded()
            self._api_answered = True
            return result, attempt, possibly

    async def _take_turn(self) -> None:
        if self.engine.bills:
            await self.limit.acquire()
            try:
                await self.gate.acquire()
            except BaseException:
                self.limit.release()
                raise
        else:
            await self.limit.acquire()

    def _after_failure(self, exc: PhotoroomBGError, backoff: float, source: ImageSource) -> float:
        """Account for a failed call; return how long this job waits before retrying."""
        if isinstance(exc, APIStatusError):
            self._api_answered = True
        if isinstance(exc, RateLimitError):
            self.limit.throttled()
        if (
            isinstance(exc, APIConnectionError)
            and not exc.possibly_billed
            and not self._api_answered
        ):
            self._unreachable.add(id(source))
            wave = min(self.r.concurrency, self._total if self._total is not None else 1 << 30)
            if len(self._unreachable) >= max(1, wave):
                self.stop(f"the Photoroom API cannot be reached ({exc})")
        if isinstance(exc, APIStatusError):
            return self.policy.delay_for(exc, backoff)  # Retry-After, capped
        return backoff

    # -- storing ---------------------------------------------------------------------------

    async def _store(
        self, key: str, content: bytes, content_type: str, source: ImageSource
    ) -> StoredObject | _Unstored:
        """Put a paid cut-out in the sink: retried for ``store_retry_budget`` seconds and
        through an outage of up to ``sink_outage_budget``; if the sink still does not take
        it, kept in the spill folder. Never abandoned when the batch stops or is cancelled.
        """
        r = self.r
        metadata = {"source": _display(source)[:1024], "options-digest": r._options_digest}
        deadline = time.monotonic() + r.store_retry_budget
        delays = self.policy.delays()
        with anyio.CancelScope(shield=True):  # paid for: finish storing it, whatever happens
            while True:
                await self._sink_available()
                if self._sink_gone is not None:
                    return await self._spill_it(key, content, content_type, self._sink_gone)
                try:
                    return await self.sink.put(
                        key, content, content_type=content_type, metadata=metadata
                    )
                except StorageUnavailableError as exc:
                    self._outage(exc)
                except (UnsafeKeyError, *_STOPPING_STORAGE_ERRORS) as exc:
                    self._stop_if_storage_is_gone(exc)
                    return await self._spill_it(key, content, content_type, exc)
                except StorageError as exc:
                    delay = next(delays)
                    if time.monotonic() + delay > deadline:
                        return await self._spill_it(key, content, content_type, exc)
                    logger.debug("retrying the put of %s after %s", key, exc)
                    await anyio.sleep(delay)
        raise AssertionError("unreachable: the store loop ends by returning")

    async def _spill_it(
        self, key: str, content: bytes, content_type: str, error: StorageError
    ) -> _Unstored:
        try:
            kept = await self.spill.put(key, content, content_type=content_type)
        except PhotoroomBGError as spill_error:
            logger.error(
                "could not keep the cut-out for %s in %s either: %s",
                key,
                self.r.spill_dir,
                spill_error,
            )
            error.__cause__ = spill_error
            return _Unstored(JobStatus.FAILED, None, error, "paid for, but neither stored nor kept")
        logger.warning("the sink did not take %s (%s); kept at %s", key, error, kept.uri)
        return _Unstored(
            JobStatus.SPILLED,
            kept,
            error,
            f"the sink did not take it ({type(error).__name__}); kept in the spill folder "
            "until a later run (resume(), retry_failed() or the same batch again) stores it "
            "without calling the engine",
        )

    async def _from_spill(self, key: str) -> tuple[bytes, str] | None:
        try:
            if not await self.spill.exists(key):
                return None
            data = await self.spill.get(key)
        except PhotoroomBGError:
            return None
        return data, _mime_of(key)

    async def _unspill(self, key: str) -> None:
        with contextlib.suppress(PhotoroomBGError):
            await self.spill.delete(key)

    def _stop_if_storage_is_gone(self, exc: StorageError) -> None:
        if isinstance(exc, _STOPPING_STORAGE_ERRORS):
            self.stop(f"{type(exc).__name__}: {exc}")

    # -- sink outages ----------------------------------------------------------------------

    def _outage(self, exc: StorageUnavailableError) -> None:
        """The sink stopped answering: every worker waits while one prober checks it."""
        if self._outage_since is not None or self._sink_gone is not None:
            return
        self._outage_since = time.monotonic()
        self._sink_ok = anyio.Event()
        logger.warning("the sink is unreachable (%s); pausing until it answers", exc)
        assert self._tg is not None
        self._tg.start_soon(self._probe_sink, exc)

    async def _sink_available(self) -> None:
        await self._sink_ok.wait()

    async def _probe_sink(self, first: StorageUnavailableError) -> None:
        budget = self.r.sink_outage_budget
        delays = self.policy.delays()
        last: StorageError = first
        assert self._outage_since is not None
        try:
            while time.monotonic() - self._outage_since < budget:
                await anyio.sleep(min(next(delays), 5.0))
                try:
                    await self.sink.exists(_PROBE_KEY)
                except StorageUnavailableError as exc:
                    last = exc
                    continue
                except StorageError as exc:  # it answers, but refuses: not an outage any more
                    last = exc
                    break
                logger.warning(
                    "the sink answers again after %.1f s; going on",
                    time.monotonic() - self._outage_since,
                )
                return
            self._sink_gone = last
            self.stop(f"the sink has been unreachable for {budget:g} s: {last}")
        finally:
            self._outage_since = None
            self._sink_ok.set()

    # -- closing ---------------------------------------------------------------------------

    async def _upload_manifest(self) -> None:
        """Store the manifest in the sink: the records already there plus this run's."""
        key = self.r.manifest_key
        assert key is not None
        assert self._manifest_path is not None
        try:
            ours = await anyio.to_thread.run_sync(_read_from, self._manifest_path, self._offset)
            await self.sink.put(
                key, self._earlier + ours, content_type="application/x-ndjson", metadata={}
            )
        except (PhotoroomBGError, OSError) as exc:
            logger.warning(
                "could not store the manifest as %r in the sink (%s); it is kept at %s",
                key,
                exc,
                self._manifest_path,
            )
            return
        if self._spool is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._spool)


@contextlib.asynccontextmanager
async def _one_error() -> AsyncIterator[None]:
    """Raise the error that ended a task group itself, not the group around it: the siblings
    it cancelled add nothing but noise."""
    try:
        yield
    except BaseExceptionGroup as group:
        raise _first_error(group) from None


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    cancelled = anyio.get_cancelled_exc_class()
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        current = pending.pop(0)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    for leaf in leaves:
        if not isinstance(leaf, cancelled):
            return leaf
    return leaves[0] if leaves else group


def _typed(exc: BaseException, kind: type[PhotoroomBGError], doing: str = "") -> PhotoroomBGError:
    """``exc`` if it is one of ours, else ``kind`` with ``exc`` as its cause."""
    if isinstance(exc, PhotoroomBGError):
        return exc
    where = f" while {doing}" if doing else " in this job"
    error = kind(f"unexpected {type(exc).__name__}{where}: {exc}")
    error.__cause__ = exc
    return error


def _lighten(error: BaseException) -> None:
    """Drop what an error would otherwise keep alive: the request (and the image in its
    body) behind an API error, and the frames (and their local variables) of tracebacks."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        if isinstance(current, APIStatusError) and current.response is not None:
            answer = current.response
            current.response = httpx.Response(
                answer.status_code, headers=answer.headers, content=answer.content
            )
        if isinstance(current, APIConnectionError):
            current.request = None
        current = current.__cause__ or current.__context__


def _display(source: ImageSource) -> str:
    try:
        return source.display
    except Exception:  # an odd location must not cost the job its record
        return repr(source.location)[1:-1]


def _name(source: ImageSource) -> str:
    return source.name.encode("utf-8", "backslashreplace").decode("utf-8")


def _mime_of(key: str) -> str:
    extension = key.rsplit(".", 1)[-1].lower()
    return {"jpg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}.get(
        extension, "image/png"
    )


def _size(path: str | os.PathLike[str] | None) -> int:
    try:
        return os.path.getsize(path) if path is not None else 0
    except OSError:
        return 0


def _read_from(path: str | os.PathLike[str], offset: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read()


async def _read_optional(sink: Sink, key: str) -> bytes:
    try:
        return await sink.get(key)
    except ObjectNotFoundError:
        return b""
