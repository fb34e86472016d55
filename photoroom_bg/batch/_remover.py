"""BatchRemover: many images in, stored cut-outs out, never lost, never paid for twice."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import random
import tempfile
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Collection
from concurrent.futures import Future
from typing import Any

from .. import _loop
from .._client import AsyncPhotoroomClient
from .._keys import KeyTemplate, content_digest, options_digest
from .._retry import is_retryable
from ..engines._base import Engine
from ..errors import (
    APIStatusError,
    AuthenticationError,
    BucketNotFoundError,
    ConfigurationError,
    ObjectNotFoundError,
    OutOfCreditsError,
    PhotoroomBGError,
    RateLimitError,
    StorageAuthError,
    StorageError,
    StorageFullError,
    UnexpectedError,
    UnsafeKeyError,
)
from ..options import EditOptions, SegmentOptions
from ..sinks import Sink, open_sink
from ..sources import ImageSource, SourceReader, SourceSpec, iter_sources
from ._handle import BatchHandle
from ._jobs import BatchReport, JobResult, JobStatus, Progress
from ._limiter import RateGate
from ._manifest import (
    Manifest,
    finished_keys_in,
    load_finished_keys,
    load_sources,
    replayable_sources,
)

__all__ = ["BatchRemover"]

logger = logging.getLogger("photoroom_bg.batch")

_STOPPING_ERRORS = (OutOfCreditsError, AuthenticationError)
# The sink cannot take any output: every later job would pay for a cut-out and lose it.
_STOPPING_STORAGE_ERRORS = (StorageFullError, StorageAuthError, BucketNotFoundError)
_EXTENSIONS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "webp": "webp", "avif": "avif"}


def _extension(options: SegmentOptions | EditOptions) -> str:
    if isinstance(options, SegmentOptions):
        return "png" if options.channels == "alpha" else _EXTENSIONS[options.format]
    return _EXTENSIONS[options.export_format or "png"]


class BatchRemover:
    """Turns many images into stored cut-outs, concurrently and within limits.

    Args:
        engine: what makes the cut-outs: an :class:`~photoroom_bg.Engine` (e.g.
            :class:`~photoroom_bg.LocalEngine`), an :class:`~photoroom_bg.AsyncPhotoroomClient`
            (wrapped in a :class:`~photoroom_bg.PhotoroomEngine`), or ``None`` for the Photoroom
            API with the key from ``api_key`` / ``$PHOTOROOM_API_KEY``.
        sink: where outputs go: a :class:`~photoroom_bg.sinks.Sink` or a string for
            :func:`~photoroom_bg.sinks.open_sink` (``"./out"``, ``"s3://bucket/prefix"``).
        options: :class:`~photoroom_bg.SegmentOptions` (default) or
            :class:`~photoroom_bg.EditOptions`, applied to every image.
        concurrency: images processed at once (and at most that many held in memory).
        requests_per_minute: budget shared by all jobs of an engine that bills, such as the
            API (``None``: no client-side limit; local engines are never limited).
            A 429 pauses every job for its ``Retry-After``.
        max_retries: engine retries per job for failures that were not billed (429, 5xx,
            connection errors). Other errors fail the job at once.
        key_template: output key naming (:class:`~photoroom_bg.sinks.KeyTemplate` or its
            template string); default ``{stem}-{digest12}.{ext}``.
        skip_existing: skip inputs whose output key already exists, without calling the engine.
        manifest: a JSON-lines file recording every finished job; on a re-run its stored
            keys are skipped without even asking the sink.
        manifest_key: also keep the manifest in the sink under this key (for workers
            without a lasting disk): read at the start to skip what is recorded there, and
            written back, with this run's records appended, when the batch ends.
        progress: show a progress bar (terminal or Jupyter; needs ``tqdm``).
        on_result: called with each :class:`JobResult` as it finishes.
        on_progress: called with a :class:`Progress` after each job.
        reader: a :class:`~photoroom_bg.sources.SourceReader` (SSRF policy, byte cap, S3
            settings); by default a safe one that refuses private networks.
        url_passthrough: with :class:`~photoroom_bg.EditOptions`, let Photoroom fetch
            ``http(s)`` inputs itself (``GET /v2/edit?imageUrl=``); keys then hash the URL.
        keep_results: how many finished jobs the handle and the report keep: the latest
            ``keep_results`` failures and as many other jobs (default 1,000, about 1 KB
            each); ``True`` keeps all, ``False`` none. Counts stay exact; the manifest and
            the sink are the complete record; ``as_completed()`` sees every job regardless.
        api_key, base_url: for the default engine.
        backoff: base delay in seconds of the retry backoff (with full jitter).
        track_credits: ask the account balance before and after the batch to report
            ``credits_spent`` (two extra round trips; ``False`` for latency-sensitive
            services running many small batches).
    """

    def __init__(
        self,
        engine: Engine | AsyncPhotoroomClient | None = None,
        *,
        sink: Sink | str | os.PathLike[str],
        options: SegmentOptions | EditOptions | None = None,
        concurrency: int = 16,
        requests_per_minute: float | None = 500,
        max_retries: int = 5,
        key_template: KeyTemplate | str | None = None,
        skip_existing: bool = True,
        manifest: str | os.PathLike[str] | None = None,
        manifest_key: str | None = None,
        progress: bool = False,
        on_result: Callable[[JobResult], object] | None = None,
        on_progress: Callable[[Progress], object] | None = None,
        reader: SourceReader | None = None,
        url_passthrough: bool = False,
        keep_results: bool | int = 1000,
        api_key: str | None = None,
        base_url: str | None = None,
        backoff: float = 0.5,
        track_credits: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if max_retries < 0:
            raise ConfigurationError("max_retries must be >= 0")
        if url_passthrough and not isinstance(options, EditOptions):
            raise ConfigurationError("url_passthrough needs EditOptions (GET /v2/edit)")
        self.engine = engine
        self.sink = sink
        self.options = options if options is not None else SegmentOptions()
        self.concurrency = concurrency
        self.requests_per_minute = requests_per_minute
        self.max_retries = max_retries
        self.key_template = (
            (key_template if isinstance(key_template, KeyTemplate) else KeyTemplate(key_template))
            if key_template is not None
            else KeyTemplate()
        )
        self.skip_existing = skip_existing
        self.manifest = manifest
        self.manifest_key = manifest_key
        self.progress_bar = progress
        self.on_result = on_result
        self.on_progress = on_progress
        self.reader = reader
        self.url_passthrough = url_passthrough
        self.keep_results = keep_results
        self.backoff = backoff
        self.track_credits = track_credits
        self._api_key = api_key
        self._base_url = base_url
        self._options_digest = options_digest(self.options)
        if progress:
            _tqdm()  # fail now, not mid-batch, when the extra is missing

    def __repr__(self) -> str:
        return (
            f"BatchRemover(engine={self.engine!r}, sink={self.sink!r}, "
            f"options={type(self.options).__name__}, concurrency={self.concurrency}, "
            f"requests_per_minute={self.requests_per_minute})"
        )

    def submit(self, sources: SourceSpec) -> BatchHandle:
        """Start processing ``sources`` and return a :class:`BatchHandle` at once.

        Works the same from scripts, notebooks (a running event loop in this thread) and
        async code: the batch runs on photoroom_bg's background event loop. Use
        ``handle.wait()`` or ``await handle``.
        """
        handle = BatchHandle(keep_results=self.keep_results)
        batch = _Batch(self, sources, handle)
        future: Future[BatchReport] = _loop.submit(batch.run())
        loop = _loop.background_loop()

        def cancel(reason: str) -> None:
            loop.call_soon_threadsafe(batch.stop, reason)

        handle._bind(future, cancel, self.submit)
        return handle

    async def run(self, sources: SourceSpec) -> BatchReport:
        """Process ``sources`` on the current event loop and return the report.

        For async services that own their engine and sink objects on this loop; results
        arrive through ``on_result`` / ``on_progress``.
        """
        handle = BatchHandle(keep_results=self.keep_results)
        batch = _Batch(self, sources, handle)
        return await batch.run()

    def resume(
        self,
        sources: SourceSpec | None = None,
        *,
        manifest: str | os.PathLike[str] | None = None,
    ) -> BatchHandle:
        """Finish an interrupted batch: what the manifest (or the sink) already holds is
        skipped without calling the engine; the rest is processed.

        Args:
            sources: the same sources as the first run. Leave out to take them from the
                manifest, which records paths, folders, globs, ``s3://`` URIs and plain URLs
                (never bytes, generators or signed URLs).
            manifest: the manifest to resume from (default: this remover's ``manifest``).
        """
        path = manifest if manifest is not None else self.manifest
        if path is None and not self.skip_existing:
            raise ConfigurationError("resume() needs a manifest or skip_existing=True")
        if sources is None:
            if path is None:
                raise ConfigurationError("resume() without sources needs a manifest")
            sources = load_sources(path)
        if path is not None and path != self.manifest:
            return _with_changes(self, manifest=path).submit(sources)
        return self.submit(sources)


def _with_changes(remover: BatchRemover, **changes: Any) -> BatchRemover:
    """A shallow copy of ``remover`` with some attributes replaced."""
    clone = copy.copy(remover)
    for name, value in changes.items():
        setattr(clone, name, value)
    return clone


def _tqdm() -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ConfigurationError(
            "progress=True needs tqdm: pip install 'photoroom-bg[progress]'"
        ) from None
    return tqdm


class _Batch:
    """One run of a BatchRemover over some sources."""

    def __init__(self, remover: BatchRemover, spec: SourceSpec, handle: BatchHandle) -> None:
        self.r = remover
        self.spec = spec
        self.handle = handle
        self.stop_reason: str | None = None
        self.billed_calls = 0
        self._bar: Any = None

    def stop(self, reason: str) -> None:
        """Start no more jobs (called on the batch's loop)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            logger.info("batch stopping: %s", reason)

    async def run(self) -> BatchReport:
        r = self.r
        started = time.monotonic()
        owned: list[Any] = []
        engine = self._engine(owned)
        sink = open_sink(r.sink) if isinstance(r.sink, (str, os.PathLike)) else r.sink
        if sink is not r.sink:
            owned.append(sink)
        reader = r.reader or SourceReader()
        if r.reader is None:
            owned.append(reader)
        manifest_path: str | os.PathLike[str] | None = r.manifest
        spool: str | None = None
        if manifest_path is None and r.manifest_key is not None:
            fd, spool = tempfile.mkstemp(prefix="photoroom-bg-manifest-", suffix=".jsonl")
            os.close(fd)
            manifest_path = spool
        manifest = Manifest(manifest_path) if manifest_path is not None else None
        finished_keys = (
            await asyncio.to_thread(load_finished_keys, manifest_path) if manifest_path else set()
        )
        earlier, offset = b"", 0
        if r.manifest_key is not None:
            offset = await asyncio.to_thread(_size, manifest_path)  # this run's records follow
            earlier = await _read_optional(sink, r.manifest_key)
            finished_keys |= finished_keys_in(earlier.decode("utf-8", "replace").splitlines())
        if manifest is not None:
            await manifest.write_header(
                replayable_sources(self.spec),
                engine=engine.name,
                options_digest=r._options_digest,
            )
        # a budget for the API; a local model has no one to be polite to
        gate = RateGate(r.requests_per_minute if engine.bills else None)
        account_before = await self._account(engine) if r.track_credits else None
        if r.progress_bar:
            self._bar = _tqdm()(desc="cut-outs", unit="img", dynamic_ncols=True)
        queue: asyncio.Queue[tuple[int, ImageSource] | None] = asyncio.Queue(r.concurrency)
        kept = None if r.keep_results is True else int(r.keep_results)
        failures: dict[str, deque[JobResult]] = defaultdict(lambda: deque(maxlen=kept))
        failure_counts: Counter[str] = Counter()
        total = 0
        # Collections (lists, paths, folders) are listed to the end so that every input left
        # over after a stop is reported as cancelled; one-shot iterators are not drained.
        one_shot = not isinstance(self.spec, (str, bytes, os.PathLike, Collection))

        async def produce() -> None:
            nonlocal total
            try:
                async for source in iter_sources(self.spec, reader=reader):
                    if self.stop_reason is not None and one_shot:
                        break  # a generator may never end: stop pulling from it
                    self.handle._source_seen()
                    await queue.put((total, source))
                    total += 1
            except PhotoroomBGError as exc:
                self.stop(f"could not list the sources: {exc}")
            finally:
                self.handle._sources_done()
                if self._bar is not None:
                    self._bar.total = total
                for _ in range(r.concurrency):
                    await queue.put(None)

        async def work() -> None:
            while (item := await queue.get()) is not None:
                index, source = item
                if self.stop_reason is not None:
                    result = JobResult(
                        index,
                        source.display,
                        source.name,
                        JobStatus.CANCELLED,
                        reason=self.stop_reason,
                    )
                    running = False
                else:
                    self.handle._job_started()
                    running = True
                    try:
                        result = await self._job(
                            index, source, engine, sink, reader, gate, finished_keys
                        )
                    except Exception as exc:  # one job's surprise must not end the batch
                        logger.error(
                            "job %d (%s) failed unexpectedly", index, source.display, exc_info=exc
                        )
                        error = UnexpectedError(f"unexpected {type(exc).__name__} in this job")
                        error.__cause__ = exc
                        result = JobResult(
                            index, source.display, source.name, JobStatus.FAILED, error=error
                        )
                if result.status is JobStatus.FAILED:
                    failures[result.error_type or "Error"].append(result)
                    failure_counts[result.error_type or "Error"] += 1
                if manifest is not None:
                    await manifest.write(
                        result, engine=engine.name, options_digest=r._options_digest
                    )
                self.handle._job_finished(result, source, running)
                self._notify(result)

        try:
            await asyncio.gather(produce(), *(work() for _ in range(r.concurrency)))
        finally:
            if manifest is not None:
                manifest.close()
            if self._bar is not None:
                self._bar.close()
            if r.manifest_key is not None and manifest_path is not None:
                await self._upload_manifest(sink, earlier, manifest_path, offset, spool)
        account_after = await self._account(engine) if account_before is not None else None
        for resource in owned:
            await resource.aclose()
        spent = None
        if account_before is not None and account_after is not None:
            spent = round(account_before - account_after, 4)
        counts = self.handle._status_counts()
        succeeded, skipped = counts[JobStatus.SUCCEEDED], counts[JobStatus.SKIPPED]
        report = BatchReport(
            total_count=total,
            stored_count=succeeded + skipped,
            succeeded_count=succeeded,
            skipped_count=skipped,
            failed_count=counts[JobStatus.FAILED],
            cancelled_count=counts[JobStatus.CANCELLED],
            failures={k: tuple(v) for k, v in failures.items()},
            failure_counts=dict(failure_counts),
            billed_calls=self.billed_calls,
            credits_spent=spent,
            stop_reason=self.stop_reason,
            duration=time.monotonic() - started,
        )
        self.handle._finish(report)
        return report

    async def _upload_manifest(
        self,
        sink: Sink,
        earlier: bytes,
        path: str | os.PathLike[str],
        offset: int,
        spool: str | None,
    ) -> None:
        """Store the manifest in the sink: the records already there plus this run's."""
        key = self.r.manifest_key
        assert key is not None
        try:
            ours = await asyncio.to_thread(_read_from, path, offset)
            await sink.put(key, earlier + ours, content_type="application/x-ndjson", metadata={})
        except (PhotoroomBGError, OSError) as exc:
            logger.warning(
                "could not store the manifest as %r in the sink (%s); it is kept at %s",
                key,
                exc,
                path,
            )
            return
        if spool is not None:
            with contextlib.suppress(OSError):
                os.unlink(spool)

    def _engine(self, owned: list[Any]) -> Engine:
        from ..engines.photoroom import PhotoroomEngine

        given = self.r.engine
        if given is None:
            engine = PhotoroomEngine(
                api_key=self.r._api_key, base_url=self.r._base_url, max_retries=0
            )
            owned.append(engine)
            return engine
        if isinstance(given, PhotoroomEngine):
            given = given.client
        if isinstance(given, AsyncPhotoroomClient):
            if not _loop.in_background_loop():  # run() on the caller's loop: share its pool
                return PhotoroomEngine(given.with_options(max_retries=0))
            # submit() runs on the background loop, and a pooled connection opened on the
            # caller's loop cannot be used here: same settings, a pool of the batch's own
            client = given._copy_with_own_pool(max_retries=0)
            owned.append(client)
            return PhotoroomEngine(client)
        return given

    @staticmethod
    async def _account(engine: Engine) -> float | None:
        client = getattr(engine, "client", None)
        if not engine.bills or not isinstance(client, AsyncPhotoroomClient):
            return None
        try:
            return (await client.account(max_retries=1)).images_available
        except PhotoroomBGError:
            return None

    def _notify(self, result: JobResult) -> None:
        if self._bar is not None:
            p = self.handle.progress
            self._bar.set_postfix(
                made=p.succeeded, skipped=p.skipped, failed=p.failed, refresh=False
            )
            self._bar.update(1)
        try:
            if self.r.on_result is not None:
                self.r.on_result(result)
            if self.r.on_progress is not None:
                self.r.on_progress(self.handle.progress)
        except Exception:
            logger.exception("a batch callback failed; the batch goes on")

    async def _job(
        self,
        index: int,
        source: ImageSource,
        engine: Engine,
        sink: Sink,
        reader: SourceReader,
        gate: RateGate,
        finished_keys: set[str],
    ) -> JobResult:
        r = self.r
        started = time.monotonic()
        base: dict[str, Any] = {"index": index, "source": source.display, "name": source.name}
        passthrough = r.url_passthrough and source.kind == "url"
        try:
            data = b"" if passthrough else await reader.read(source)
            digest = content_digest(source.location.encode() if passthrough else data)
            key = r.key_template.render(
                stem=source.name,
                content_digest=digest,
                options_digest=r._options_digest,
                ext=_extension(r.options),
                engine=engine.name,
            )
        except PhotoroomBGError as exc:
            return JobResult(**base, status=JobStatus.FAILED, error=exc, duration=_since(started))
        base.update(key=key, input_size=len(data))
        try:
            if key in finished_keys or (r.skip_existing and await sink.exists(key)):
                return JobResult(
                    **base,
                    status=JobStatus.SKIPPED,
                    output=await _describe(sink, key),
                    reason="output already stored",
                    duration=_since(started),
                )
        except PhotoroomBGError as exc:
            self._stop_if_storage_is_gone(exc)
            return JobResult(**base, status=JobStatus.FAILED, error=exc, duration=_since(started))
        try:
            result, attempts = await self._call_engine(engine, gate, data, source, passthrough)
        except _EngineFailed as failed:
            if isinstance(failed.error, _Stopped):
                return JobResult(
                    **base,
                    status=JobStatus.CANCELLED,
                    reason=str(failed.error),
                    attempts=failed.attempts,
                    duration=_since(started),
                )
            if isinstance(failed.error, _STOPPING_ERRORS):
                self.stop(f"{type(failed.error).__name__}: {failed.error}")
            return JobResult(
                **base,
                status=JobStatus.FAILED,
                error=failed.error,
                attempts=failed.attempts,
                duration=_since(started),
            )
        if engine.bills:
            self.billed_calls += 1
        try:
            stored = await self._store(sink, key, result.content, result.content_type, source)
        except PhotoroomBGError as exc:
            self._stop_if_storage_is_gone(exc)
            return JobResult(
                **base,
                status=JobStatus.FAILED,
                error=exc,
                attempts=attempts,
                billed=engine.bills,
                duration=_since(started),
            )
        return JobResult(
            **base,
            status=JobStatus.SUCCEEDED,
            output=stored,
            attempts=attempts,
            billed=engine.bills,
            duration=_since(started),
            output_size=len(result.content),
        )

    def _stop_if_storage_is_gone(self, exc: PhotoroomBGError) -> None:
        if isinstance(exc, _STOPPING_STORAGE_ERRORS):
            self.stop(f"{type(exc).__name__}: {exc}")

    async def _call_engine(
        self,
        engine: Engine,
        gate: RateGate,
        data: bytes,
        source: ImageSource,
        passthrough: bool,
    ) -> tuple[Any, int]:
        r = self.r
        attempt = 0
        while True:
            attempt += 1
            if self.stop_reason is not None and attempt > 1:
                raise _EngineFailed(_Stopped(self.stop_reason), attempt - 1)
            await gate.acquire()
            try:
                if passthrough:
                    result = await engine.process_url(source.location, r.options)  # type: ignore[attr-defined]
                else:
                    result = await engine.process(data, r.options)
                return result, attempt
            except PhotoroomBGError as exc:
                if not is_retryable(exc) or attempt > r.max_retries:
                    raise _EngineFailed(exc, attempt) from None
                delay = _backoff(r.backoff, attempt)
                if isinstance(exc, RateLimitError):
                    gate.pause(exc.retry_after if exc.retry_after is not None else delay)
                elif isinstance(exc, APIStatusError) and exc.status_code == 503:
                    gate.pause(delay)
                else:
                    await asyncio.sleep(delay)
                logger.debug("retrying %s after %s (attempt %d)", source.display, exc, attempt)

    async def _store(
        self, sink: Sink, key: str, content: bytes, content_type: str, source: ImageSource
    ) -> Any:
        """Put with retries: the engine's (billed) result is kept in hand, never re-made."""
        metadata = {"source": source.display[:1024], "options-digest": self.r._options_digest}
        for attempt in range(1, 4):
            try:
                return await sink.put(key, content, content_type=content_type, metadata=metadata)
            except (UnsafeKeyError, *_STOPPING_STORAGE_ERRORS):
                raise
            except StorageError:
                if attempt == 3:
                    raise
                await asyncio.sleep(_backoff(self.r.backoff, attempt))
        raise AssertionError("unreachable")


class _Stopped(PhotoroomBGError):
    """The batch stopped while this job was waiting to retry."""


class _EngineFailed(Exception):
    def __init__(self, error: PhotoroomBGError, attempts: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts


async def _describe(sink: Sink, key: str) -> Any:
    stat = getattr(sink, "stat", None)
    if stat is not None:
        try:
            return await stat(key)
        except PhotoroomBGError:
            return None
    return None


def _backoff(base: float, attempt: int) -> float:
    return random.uniform(0, min(30.0, base * 2 ** (attempt - 1)))


def _since(started: float) -> float:
    return time.monotonic() - started


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
