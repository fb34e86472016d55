"""One run of a BatchRemover: a task group that owns the lister, the workers, the manifest
writer and every resource the run opened, and ends them all through one place."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._client import AsyncPhotoroomClient
from .._images import answer_problem
from .._keys import content_digest
from .._logs import get_logger
from ..engines._base import Engine, check_engine_options
from ..errors import (
    AuthenticationError,
    ConfigurationError,
    OutOfCreditsError,
    PhotoroomBGError,
    SourceError,
    StorageError,
    UnexpectedError,
    ValidationError,
)
from ..models import ImageResult
from ..options import SegmentOptions
from ..sinks import StoredObject
from ..sinks._common import check_key
from ..sources import ImageSource, SourceReader, SourceSpec, _working_folder, iter_sources
from ._callbacks import Callbacks
from ._calls import EngineCalls, EngineFailed, Stopped
from ._claims import making, place_of, stored_under
from ._failures import lighten, misleading, one_error, typed
from ._handle import BatchHandle
from ._jobs import BatchReport, JobResult, JobStatus
from ._manifest import (
    Manifest,
    ManifestState,
    file_size,
    not_a_manifest,
    read_from_sink,
    read_manifest,
    replayable_sources,
    unsent_runs,
    upload,
)
from ._progress import ProgressBar
from ._storage import PROBE_KEY, Storage, Unstored

if TYPE_CHECKING:
    from ._remover import BatchRemover

__all__ = ["Batch"]

logger = get_logger("photoroom_bg.batch")

T = TypeVar("T")

# a wrong key, an empty account: every further call would fail the same way
# every later call would fail the same way: out of credits, a refused key, or an engine
# that cannot call at all (no key, a client closed under the batch)
_STOPPING_ERRORS = (OutOfCreditsError, AuthenticationError, ConfigurationError)
_EXTENSIONS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp", "avif": "avif"}
# an output stored by a sink that cannot describe it cheaply
_STORED_SOMEWHERE = object()
#: Cut-outs a batch remembers having made (the latest distinct images, about 300 bytes each),
#: so that a later copy of the same image under another name is stored from it, not paid for.
MADE_REMEMBERED = 10_000
#: How long a batch made with ``track_credits=True`` waits for each balance read. The balance
#: is an extra: a read that does not come within this holds no paid call back any longer,
#: and the batch then reports no ``credits_spent`` rather than a guess.
BALANCE_WAIT = 10.0


def _extension(options: Any) -> str:
    if isinstance(options, SegmentOptions):
        return _EXTENSIONS[options.format]  # a mask (channels="alpha") is sent in it too
    return _EXTENSIONS[getattr(options, "export_format", None) or "png"]


@attrs.define
class _Job:
    """One job's identity and the fields of its result, gathered as it goes."""

    index: int
    source: ImageSource
    started: float
    fields: dict[str, Any] = attrs.field(factory=dict)
    made_as: bytes | None = None  # what its cut-out is made as, once known (see _InFlight)
    kept: list[Unstored] = attrs.field(factory=list)  # spilled as the sink's put raised sys.exit()

    def done(self, status: JobStatus, **fields: Any) -> JobResult:
        return JobResult(
            self.index,
            _display(self.source),
            _name(self.source),
            status,
            duration=time.monotonic() - self.started,
            **{**self.fields, **fields},
        )


@attrs.define
class _InFlight:
    """A job whose content (+ options + engine) another job may be waiting for."""

    index: int
    key: str
    made_as: bytes  # its identity's first 16 bytes: what :attr:`Batch._made` remembers it by
    done: anyio.Event = attrs.field(factory=anyio.Event)
    waiters: int = 0
    output: Any = None  # its StoredObject once stored
    content: tuple[bytes, str] | None = None  # kept only while duplicates wait


def _real(path: str) -> str:
    """``path`` with its symlinks resolved, as far as they can be (else as given)."""
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):  # a NUL byte: refused where the file is opened
        return os.path.normpath(path)


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
        bar: ProgressBar | None = None,
    ) -> None:
        self.r = remover
        self.spec = spec
        # relative paths are the working folder's now, when the batch is started: a change
        # of working folder while it runs (a notebook's %cd) must not change what it reads
        self.cwd = _working_folder()
        self.handle = handle
        self.retry = retry
        self.bar = bar
        self.stop_reason: str | None = None
        #: set once :meth:`process` has ended and closed everything, whatever the way
        self.ended = threading.Event()
        #: paid calls to the engine under way when :meth:`give_up` was called
        self.cut_short = 0
        self._callbacks: Callbacks | None = None
        if remover.on_result is not None or remover.on_progress is not None:
            self._callbacks = Callbacks(
                remover.on_result, remover.on_progress, handle=handle,
                stop_for=self.stop_for,
            )  # fmt: skip
        self.billed_calls = 0
        self.possibly_billed_calls = 0
        self.possibly_billed_twice = 0
        self.listing_error: str | None = None
        self._resources = contextlib.AsyncExitStack()
        self._waiting: set[anyio.CancelScope] = set()
        # the listing's hand-over: inputs sent and taken so far, and the event the listing
        # waits for, when the workers' queue is full, until it is half empty again
        self._sent = self._taken = 0
        self._room: anyio.Event | None = None
        self._inflight: dict[str, _InFlight] = {}
        # identity -> (index, key, spilled) of a job that made it, the least recent first
        self._made: OrderedDict[bytes, tuple[int, str, bool]] = OrderedDict()
        self._finished_keys: set[str] = set()
        #: what code of the caller's (a callback, a sink, a reader, a key template, the
        #: sources) raised that is no Exception (``sys.exit()``...): the batch stops, and its
        #: caller gets it once the batch has ended
        self.raised_to_stop: BaseException | None = None
        # what the manifest records as made (see ManifestState.made): image -> its key
        self._recorded_made: dict[bytes, str] = {}
        # key -> the image (made_as) a job of this batch makes, or an earlier run stored,
        # under it: a key template of the caller's may give two images one key
        self._owners: dict[str, bytes] = {}
        self._recorded_owners: dict[str, bytes] = {}
        self._total: int | None = None
        self._started = time.monotonic()
        self._account_before: float | None = None
        self._manifest: Manifest | None = None
        self._manifest_path: str | os.PathLike[str] | None = None
        self._spool: str | None = None
        self._earlier = b""
        self._offset = 0
        self._opened = False
        kept = None if remover.keep_results is True else int(remover.keep_results)
        self._failures: defaultdict[str, deque[JobResult]] = defaultdict(lambda: deque(maxlen=kept))
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
            self.bar.stopped()

    def give_up(self, reason: str) -> None:
        """Stop, and wait for the sink no more (the interpreter is exiting, past the
        ``exit_timeout``): the cut-outs in hand go to the spill folder. Records the calls
        to the engine under way, which the batch's cancel that follows cuts short."""
        self.stop(reason)
        self.cut_short = self.calls.sending if self.engine.bills else 0
        self.storage.give_up(reason)

    def stop_for(self, exc: BaseException, where: str) -> None:
        """Stop as :meth:`stop` does for ``exc``, which is no ``Exception`` and was raised by
        code of the caller's (``sys.exit()``, ``KeyboardInterrupt``, ``pytest.fail()``): a
        request to stop. Raised on, it would end the batch's tasks with the calls under way
        (paid for), or the thread of the background loop; the caller gets it once the batch
        has ended instead."""
        if self.raised_to_stop is None:
            self.raised_to_stop = exc
        self.stop(f"{where} raised {type(exc).__name__}")

    def _manifest_failed(self, error: StorageError) -> None:
        """The manifest cannot be written: no more paid calls whose records would be lost
        (the calls under way finish and are stored; a re-run finds them in the sink)."""
        logger.error("%s; the batch stops", error)
        self.stop(f"{error}; the outputs stored are kept, and a run of the batch again skips them")

    async def _stoppable(self, wait: Callable[[], Awaitable[T]]) -> T:
        """Await ``wait()``; raise :class:`Stopped` if the batch stops meanwhile."""
        if self.stop_reason is not None:
            raise Stopped(self.stop_reason)
        with anyio.CancelScope() as scope:
            self._waiting.add(scope)
            try:
                return await wait()
            finally:
                self._waiting.discard(scope)
        raise Stopped(self.stop_reason or "stopped")

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
        self.reader = r.reader or SourceReader()
        if r.reader is None:
            self._resources.push_async_callback(self.reader.aclose)
        policy = r._retry_policy()
        self.storage = Storage(
            r.sink,
            r.spill_dir,
            policy,
            retry_budget=r.store_retry_budget,
            timeout=r.store_timeout,
            outage_budget=r.sink_outage_budget,
            stop=self.stop,
        )
        self._place = place_of(r.sink)
        self.calls = EngineCalls(
            self.engine,
            r.options,
            policy,
            max_retries=r.max_retries,
            outage_budget=r.engine_outage_budget,
            requests_per_minute=r.requests_per_minute,
            concurrency=r.concurrency,
            stoppable=self._stoppable,
            stop=self.stop,
            stopped=lambda: self.stop_reason is not None,
        )
        # the sink and the spill folder are checked before the manifest file is made: a
        # run that cannot start leaves nothing behind
        try:
            if r.manifest_key is not None:  # also proves the sink answers
                self._earlier = await self.storage.bounded(
                    read_from_sink(r.sink, r.manifest_key), "to read the manifest"
                )
                foreign = not_a_manifest(self._earlier[:64], f"the sink's {r.manifest_key!r}")
                if foreign is not None:
                    raise foreign
            else:
                await self.storage.bounded(r.sink.exists(PROBE_KEY), "to answer")
        except StorageError as exc:
            raise type(exc)(f"the sink is not usable: {exc}") from exc
        except PhotoroomBGError:
            raise
        except Exception as exc:  # a sink of the caller's may raise anything: typed here
            raise StorageError(f"the sink is not usable: {type(exc).__name__}: {exc}") from exc
        try:  # where a paid cut-out goes when the sink does not take it
            await self.storage.spill.exists(PROBE_KEY)
        except StorageError as exc:
            raise type(exc)(
                "the spill folder is not usable (give spill_dir=, or set "
                f"PHOTOROOM_BG_SPILL_DIR): {exc}"
            ) from exc
        state = await self._open_manifest()
        if r.manifest_key is not None:
            state.feed(self._earlier.split(b"\n"))
        self._finished_keys = set(state.finished)
        self._recorded_made = state.made
        if not r.key_template._distinct:  # (only such a template can give two images one key)
            self._recorded_owners = {key: made_as for made_as, key in state.made.items()}
        if self._manifest is not None:
            await self._manifest.write_header(
                replayable_sources(self.spec),
                engine=self.engine.name,
                options_digest=r._options_digest,
                retry=self.retry,
            )

    async def _open_manifest(self) -> ManifestState:
        """Open the manifest (a temporary one when it lives in the sink) and read it."""
        self._manifest_path = self.r.manifest
        if self._manifest_path is None and self.r.manifest_key is not None:
            fd, self._spool = tempfile.mkstemp(prefix="photoroom-bg-manifest-", suffix=".jsonl")
            os.close(fd)
            self._manifest_path = self._spool
        if self._manifest_path is None:
            return ManifestState()
        if self.r.manifest is not None:
            self._check_manifest_place(os.fspath(self.r.manifest))
        self._manifest = Manifest(self._manifest_path)
        await anyio.to_thread.run_sync(self._manifest.open)
        self._resources.callback(self._manifest.close)
        self._offset = await anyio.to_thread.run_sync(file_size, self._manifest_path)
        if self.r.manifest is not None and self.r.manifest_key is not None:
            # a local manifest kept for the sink's copy: runs it holds that never reached
            # the copy (killed before their end) go up with this run's records
            self._earlier += await anyio.to_thread.run_sync(
                unsent_runs, self._manifest_path, self._earlier, self._offset
            )
        return await anyio.to_thread.run_sync(read_manifest, self._manifest_path)

    def _check_manifest_place(self, manifest: str) -> None:
        """Refuse a manifest named as the sink's folder or the spill folder, or as a folder
        above one: those folders are made as cut-outs arrive, after the manifest, and a file
        in their place would leave a paid cut-out nowhere to go."""
        folders = [("the spill folder", os.fspath(self.r.spill_dir))]
        place = place_of(self.r.sink)  # ("file", folder) for a file-system sink or a view
        if isinstance(place, tuple) and place[0] == "file":
            folders.insert(0, ("the sink's folder", str(place[1])))
        file = _real(manifest)
        for what, folder in folders:
            real = _real(folder)
            if real == file or real.startswith(file.rstrip(os.sep) + os.sep):
                raise ConfigurationError(
                    f"the manifest {manifest} is where {what} ({folder.rstrip(os.sep)}) goes: "
                    "a file there leaves no room for the folder; name another file"
                )

    def _make_engine(self) -> Engine:
        from .. import _loop
        from ..engines.photoroom import PhotoroomEngine

        given = self.r.engine
        if given is None:
            made = PhotoroomEngine(
                api_key=self.r._api_key,
                base_url=self.r._base_url,
                timeout=self.r._timeout,
                max_retries=0,
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

    async def _balance_before(self, done: anyio.Event) -> None:
        try:
            self._account_before = await self._account("before")
        finally:
            done.set()

    async def _account(self, when: str) -> float | None:
        """The images left on the account, read ``when`` ("before" or "after") the batch;
        ``None`` when the engine cannot tell, or the read failed or did not come in time."""
        client = getattr(self.engine, "client", None)
        if not self.engine.bills or not isinstance(client, AsyncPhotoroomClient):
            return None
        problem = f"did not come within {BALANCE_WAIT:g} s"
        with anyio.move_on_after(BALANCE_WAIT):
            try:
                return (await client.account(max_retries=1)).images_available
            except PhotoroomBGError as exc:
                problem = f"could not be read ({type(exc).__name__}: {exc})"
        logger.warning(
            "the account balance %s the batch %s: credits_spent is not reported", when, problem
        )
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
            async with one_error(), anyio.create_task_group() as tg:
                self.storage.task_group = tg  # where an outage prober runs
                if self._manifest is not None:
                    tg.start_soon(self._manifest.writer, self._manifest_failed)
                balance_read = anyio.Event()
                if self.r.track_credits:
                    # read while the first jobs read and check their inputs; they wait for
                    # it before their first paid call
                    self.calls.ready = balance_read
                    tg.start_soon(self._balance_before, balance_read)
                else:
                    balance_read.set()
                if self._callbacks is not None:
                    from .. import _loop

                    # submitted, on the loop every batch shares: called off it (see
                    # Callbacks); run() on the caller's loop calls them in place
                    self._callbacks.threaded = _loop.in_background_loop()
                    if self._callbacks.threaded:
                        tg.start_soon(self._callbacks.deliver)
                async with anyio.create_task_group() as jobs:
                    # a worker per input listed, up to the concurrency: a batch of three
                    # inputs at concurrency=100_000 starts three
                    def spawn() -> None:
                        jobs.start_soon(self._work, receive.clone())

                    jobs.start_soon(self._list, send, receive, spawn)
                if self._callbacks is not None and self._callbacks.threaded:
                    await self._callbacks.drain()  # every job's calls made before the report
                if self._manifest is not None:
                    self._manifest.finish()
                await balance_read.wait()  # even when no job called the engine
                tg.cancel_scope.cancel()  # the outage prober, if one is still waiting
            account_after = None
            if self._account_before is not None:
                account_after = await self._account("after")
        finally:
            try:
                with anyio.CancelScope(shield=True):
                    if self.bar is not None:
                        self.bar.close()
                    await self._close()
            finally:
                self.ended.set()
        return self._report(account_after)

    async def close_unstarted(self) -> None:
        """Close what :meth:`open` made, for a batch that will not be processed."""
        await self._close()

    async def _close(self) -> None:
        try:
            await self._resources.aclose()
        finally:
            key, path = self.r.manifest_key, self._manifest_path
            if key is not None and path is not None:
                stored = await upload(
                    self.r.sink, key, self._earlier, path, self._offset, self.r.store_timeout
                )
                if stored and self._spool is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(self._spool)

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
        self.handle._finish(report, self.raised_to_stop)
        return report

    def _outputs(self) -> list[str]:
        """Where this batch stores cut-outs, which listings of its inputs leave out: the
        sink's folder, or its bucket prefix on the server the reader lists, and the spill
        folder."""
        outputs = [str(self.storage.spill.root)]
        stored = stored_under(self.r.sink, self.reader.s3_endpoint)
        return outputs if stored is None else [*outputs, stored]

    async def _list(
        self,
        send: MemoryObjectSendStream[tuple[int, ImageSource]],
        receive: MemoryObjectReceiveStream[tuple[int, ImageSource]],
        spawn: Callable[[], None],
    ) -> None:
        # Collections (lists, paths, folders) are listed to the end so that every input left
        # over after a stop is reported as cancelled; one-shot iterators are not drained.
        one_shot = not isinstance(self.spec, (str, bytes, os.PathLike, Collection))
        total = 0
        sources = iter_sources(
            self.spec, reader=self.reader, leave_out=self._outputs(), cwd=self.cwd
        )
        async with send, receive:  # the workers hold clones of receive
            try:
                while True:
                    if self.stop_reason is not None and one_shot:
                        break  # a generator may never end: stop pulling from it
                    source = await (self._next_input(sources) if one_shot else anext(sources))
                    if source is None:
                        break  # stopped while a generator made its next input wait
                    self.handle._source_seen()
                    if total < self.r.concurrency:
                        spawn()
                    try:  # no yield to the loop while there is room (send() always yields)
                        send.send_nowait((total, source))
                    except anyio.WouldBlock:
                        # full: wait until the workers have taken half of it, then fill it
                        # again (two task steps per half a queue, not two per input)
                        self._room = anyio.Event()
                        await self._room.wait()
                        send.send_nowait((total, source))
                    total += 1
                    self._sent = total
            except StopAsyncIteration:
                pass  # listed to the end
            except Exception as exc:  # the listing ends; what it listed is processed
                self._listing_failed(exc, total)
            except BaseException as exc:
                error = misleading(exc, "the iterator of sources")
                if error is not None:
                    self._listing_failed(error, total)
                elif isinstance(exc, anyio.get_cancelled_exc_class()):
                    raise
                else:  # sys.exit() in the caller's iterator of sources
                    self.stop_for(exc, "the sources")
            finally:
                self._total = self.calls.total = total
                self.handle._sources_done()
                if self.bar is not None:
                    self.bar.set_total(total)

    def _listing_failed(self, exc: Exception, total: int) -> None:
        """The listing ends with ``exc``; what it listed is processed."""
        error = typed(exc, SourceError, "listing the sources")
        self.listing_error = f"{type(error).__name__}: {error}"
        logger.error("listing the sources stopped after %d: %s", total, error)

    async def _next_input(self, sources: AsyncIterator[ImageSource]) -> ImageSource | None:
        """The next input of a one-shot iterator of sources, or ``None`` when the batch
        stops while it waits for one (a generator waiting for a queue may never give one)."""
        with anyio.CancelScope() as scope:
            self._waiting.add(scope)
            try:
                return await anext(sources)
            finally:
                self._waiting.discard(scope)
        return None

    async def _work(self, receive: MemoryObjectReceiveStream[tuple[int, ImageSource]]) -> None:
        async with receive:
            while True:
                try:
                    try:  # no yield to the loop when an input waits (receive() always yields)
                        index, source = receive.receive_nowait()
                    except anyio.WouldBlock:
                        index, source = await receive.receive()
                except anyio.EndOfStream:
                    return
                self._taken += 1
                if self._room is not None and self._sent - self._taken <= self.r.concurrency // 2:
                    self._room.set()  # the listing fills the queue again
                    self._room = None
                job = _Job(index, source, time.monotonic())
                running = self.stop_reason is None
                if running:
                    self.handle._job_started()
                    try:
                        result = await self._job(job)
                    except Exception as exc:  # one job's surprise must not end the batch
                        result = self._unexpected(job, exc)
                    except BaseException as exc:
                        error = misleading(exc, "code of the caller's run for this job")
                        if error is not None:
                            result = self._unexpected(job, error)
                        elif isinstance(exc, anyio.get_cancelled_exc_class()):
                            raise
                        else:  # sys.exit() in a sink, a reader, a template
                            self.stop_for(exc, f"job {index}")
                            if job.kept:  # paid, and kept in the spill folder (or lost)
                                result = job.done(job.kept[0].status, **job.kept[0].fields())
                            else:
                                result = job.done(JobStatus.CANCELLED, reason=self.stop_reason)
                else:
                    result = job.done(JobStatus.CANCELLED, reason=self.stop_reason)
                made = self._record(result, source, running, job.made_as)
                if made is not None:  # this job's callbacks made before the next job
                    await made.wait()

    def _unexpected(self, job: _Job, exc: Exception) -> JobResult:
        """A job that raised what none of its steps expected: failed, and logged."""
        logger.error(
            "job %d (%s) failed unexpectedly", job.index, _display(job.source), exc_info=exc
        )
        return job.done(JobStatus.FAILED, error=typed(exc, UnexpectedError))

    def _record(
        self, result: JobResult, source: ImageSource, running: bool, made_as: bytes | None
    ) -> anyio.Event | None:
        """Count and record a finished job; the event of its callbacks, if any."""
        if result.error is not None:
            lighten(result.error)  # no input bytes kept through the error
        if result.status is JobStatus.FAILED:
            name = result.error_type or "Error"
            self._failures[name].append(result)
            self._failure_counts[name] += 1
        if self._manifest is not None:
            self._manifest.write(
                result,
                engine=self.engine.name,
                options_digest=self.r._options_digest,
                made_as=made_as,
            )
        self.handle._job_finished(result, source, running)
        return self._notify(result)

    def _notify(self, result: JobResult) -> anyio.Event | None:
        callbacks = self._callbacks
        wants = self.bar is not None or (callbacks is not None and callbacks.wants_progress)
        p = self.handle.progress if wants else None  # one snapshot for the bar and on_progress
        if self.bar is not None:
            assert p is not None
            self.bar.job_done(
                result.status is not JobStatus.CANCELLED,
                made=p.succeeded, skipped=p.skipped, failed=p.failed,
                **({"spilled": p.spilled} if p.spilled else {}),
                **({"cancelled": p.cancelled} if p.cancelled else {}),
            )  # fmt: skip
        if callbacks is None:
            return None
        return callbacks.add(result, p if callbacks.wants_progress else None)

    # -- one job ---------------------------------------------------------------------------

    async def _job(self, job: _Job) -> JobResult:
        r, source = self.r, job.source
        passthrough = r.url_passthrough and source.kind == "url"
        try:
            if passthrough:
                data = b""
            elif source.data is not None:  # in memory: nothing to wait for, nothing to stop
                data = await self.reader.read(source)
            else:
                data = await self._stoppable(lambda: self.reader.read(source))
            digest = content_digest(source.location.encode() if passthrough else data)
            key = r.key_template.render(
                stem=source.name,
                content_digest=digest,
                options_digest=r._options_digest,
                ext=_extension(r.options),
                engine=self.engine.name,
            )
            check_key(key)  # a key no sink takes fails now, not after the engine is paid
        except Stopped as stopped:
            return job.done(JobStatus.CANCELLED, reason=str(stopped))
        except PhotoroomBGError as exc:
            return job.done(JobStatus.FAILED, error=exc)
        job.fields.update(key=key, input_size=len(data))
        # what makes two inputs the same cut-out: content, options and engine
        identity = hashlib.sha256(f"{digest}:{r._options_digest}:{self.engine.name}".encode())
        try:
            return await self._deduplicated(job, key, identity.hexdigest(), data)
        except Stopped as stopped:
            self.possibly_billed_calls += stopped.possibly
            job.fields.update(attempts=stopped.attempts, possibly_billed=stopped.possibly)
            return job.done(JobStatus.CANCELLED, reason=str(stopped))
        except StorageError as exc:
            self.storage.stop_if_gone(exc)
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
                output = first.output if isinstance(first.output, StoredObject) else None
                return job.done(JobStatus.SKIPPED, output=output, reason=reason)
            if first.output is not None and first.content is not None:
                content, content_type = first.content
                reason = f"the same image as #{first.index}: its cut-out, stored again"
                return await self._keep(job, key, content, content_type, reason)
            # the first one failed: try it ourselves
        entry = _InFlight(job.index, key, bytes.fromhex(identity[:32]))
        clash = self._clash(key, entry.made_as)
        if clash is not None:
            return job.done(JobStatus.FAILED, error=clash)
        job.made_as = entry.made_as
        self._inflight[identity] = entry
        try:
            result = await self._make(job, key, data, entry)
            if result.status in (JobStatus.SUCCEEDED, JobStatus.SKIPPED):
                entry.output = result.output or _STORED_SOMEWHERE
            if result.status in (JobStatus.SUCCEEDED, JobStatus.SKIPPED, JobStatus.SPILLED):
                self._remember(entry, result.status is JobStatus.SPILLED)
            return result
        finally:
            del self._inflight[identity]
            if entry.waiters == 0:
                entry.content = None
            entry.done.set()

    def _clash(self, key: str, made_as: bytes) -> ValidationError | None:
        """Why ``key`` cannot hold this image's cut-out: another image of this batch, or one
        an earlier run recorded, has it. Only a key template of the caller's (a callable)
        can give two images one key; a later one was skipped as "already stored" (never
        made), or paid for and written over the first."""
        if self.r.key_template._distinct:  # the key holds the image's digest: no clash
            return None
        if self._owners.setdefault(key, made_as) != made_as:
            whose = "another image of this batch"
        elif self._recorded_owners.get(key, made_as) != made_as:
            whose = "another image (or options, or engine) an earlier run recorded"
        else:
            return None
        return ValidationError(
            f"the key template gave the key {key!r} to this image and to {whose}: it must "
            "tell inputs apart (use {digest12} or {digest}); nothing was paid for this one"
        )

    async def _make(self, job: _Job, key: str, data: bytes, entry: _InFlight) -> JobResult:
        if key in self._finished_keys:
            found: StoredObject | bool | None
            if self.storage.durable:  # described by a stat; trusted where it cannot tell
                found = await self.storage.describe(key)
            else:
                found = await self._stoppable(lambda: self.storage.lookup(key))
            if found is not False:
                output = found if isinstance(found, StoredObject) else None
                return job.done(JobStatus.SKIPPED, output=output, reason="output already stored")
            # recorded, but not there: lost since (a sink that is not durable, and a power
            # cut), removed, or the manifest is another sink's: made again
            self._finished_keys.discard(key)
        spilled = await self.storage.from_spill(key)
        if spilled is not None:
            return await self._unspill(job, key, spilled, "made by an earlier run")
        if not self.r.skip_existing:
            return await self._copy_or_pay(job, key, data, entry)
        # another batch on this machine making this key here is waited for, then looked for
        async with making(self._place, key, self._stoppable) as waited:
            if self.storage.looks_up_in_place():  # no turn of the loop: nothing to stop
                if self.stop_reason is not None:
                    raise Stopped(self.stop_reason)
                found = await self.storage.lookup(key)
            else:
                found = await self._stoppable(lambda: self.storage.lookup(key))
            if found is not False:
                self._finished_keys.add(key)
                output = found if isinstance(found, StoredObject) else None
                why = "stored meanwhile by another batch" if waited else "output already stored"
                return job.done(JobStatus.SKIPPED, output=output, reason=why)
            # the batch waited for may have paid, and found the sink refusing the cut-out
            spilled = await self.storage.from_spill(key, listed=False) if waited else None
            if spilled is not None:
                return await self._unspill(job, key, spilled, "made meanwhile by another batch")
            return await self._copy_or_pay(job, key, data, entry)

    def _remember(self, entry: _InFlight, spilled: bool) -> None:
        made, digest = self._made, entry.made_as
        if digest not in made or made[digest][2]:  # the first one stored, not spilled, wins
            made[digest] = (entry.index, entry.key, spilled)
        made.move_to_end(digest)
        if len(made) > MADE_REMEMBERED:
            made.popitem(last=False)

    async def _copy_or_pay(self, job: _Job, key: str, data: bytes, entry: _InFlight) -> JobResult:
        """Store a copy of the cut-out an earlier job of this batch made of the same image
        (under another key), when it can still be read; else pay for one."""
        made = self._made.get(entry.made_as)
        if made is not None and made[1] != key:
            index, made_key, spilled = made
            content = await self.storage.read_back(made_key, spilled=spilled)
            if content is not None:
                reason = f"the same image as #{index}: its cut-out, stored again"
                return await self._keep(job, key, *content, reason)
        recorded = self._recorded_made.get(entry.made_as)
        if recorded is not None and recorded != key:
            # an earlier run made it under another name (a renamed copy, a new SKU)
            content = await self.storage.read_back(recorded, spilled=False)
            if content is not None and answer_problem(*content) is None:
                reason = f"the same image as {recorded}, made by an earlier run: stored again"
                return await self._keep(job, key, *content, reason)
        return await self._pay(job, key, data, entry)

    async def _unspill(
        self, job: _Job, key: str, spilled: tuple[bytes, str], made: str
    ) -> JobResult:
        """Store a cut-out from the spill folder, and let it go there once stored."""
        content, content_type = spilled
        reason = f"{made} and kept in the spill folder: stored now"
        result = await self._keep(job, key, content, content_type, reason)
        if result.status is JobStatus.SUCCEEDED:
            await self.storage.unspill(key)
        return result

    async def _pay(self, job: _Job, key: str, data: bytes, entry: _InFlight) -> JobResult:
        """Call the engine for this job's cut-out and store it."""
        url = job.source.location if self.r.url_passthrough and job.source.kind == "url" else None
        try:
            made, attempts, possibly = await self.calls.call(job.index, data, url)
        except EngineFailed as failed:
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
        problem = _unusable(made)
        if problem is not None:  # never stored: a later run would skip it as made
            why = f"the engine {self.engine.name!r} {problem}; nothing was stored"
            return job.done(JobStatus.FAILED, error=UnexpectedError(why))
        if entry.waiters:  # a duplicate with another key waits for these bytes
            entry.content = (made.content, made.content_type)
        return await self._keep(job, key, made.content, made.content_type, None)

    async def _keep(
        self, job: _Job, key: str, content: bytes, content_type: str, reason: str | None
    ) -> JobResult:
        """Store a cut-out in hand and say how it ended."""
        metadata = {"source": _display(job.source)[:1024], "options-digest": self.r._options_digest}
        stored = await self.storage.store(key, content, content_type, metadata, job.kept)
        job.fields["output_size"] = len(content)
        if isinstance(stored, Unstored):
            return job.done(stored.status, **stored.fields())
        self._finished_keys.add(key)
        return job.done(JobStatus.SUCCEEDED, output=stored, reason=reason)


def _unusable(made: object) -> str | None:
    """Why an engine's answer cannot be stored as a cut-out (an engine of your own may
    return anything), or ``None``."""
    if not isinstance(made, ImageResult):
        return f"returned {type(made).__name__}, not an ImageResult"
    content: object = made.content  # typed bytes, but an engine may put anything there
    if isinstance(content, (bytearray, memoryview)):
        content = bytes(content)
    if not isinstance(content, bytes):
        return f"returned an ImageResult whose content is {type(content).__name__}"
    problem = answer_problem(content, str(made.content_type))
    return None if problem is None else f"made no usable cut-out: {problem}"


def _display(source: ImageSource) -> str:
    try:
        return source.display
    except Exception:  # an odd location must not cost the job its record
        return repr(source.location)[1:-1]


def _name(source: ImageSource) -> str:
    return source.name.encode("utf-8", "backslashreplace").decode("utf-8")
