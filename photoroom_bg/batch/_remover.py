"""BatchRemover: many images in, stored cut-outs out, never lost, never paid for twice."""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from .. import _loop
from .._base_client import NOT_GIVEN, BaseClient, NotGiven, Timeout, _env_timeout
from .._client import AsyncPhotoroomClient
from .._keys import KeyTemplate, options_digest
from .._logs import get_logger
from .._numbers import (
    check_callback,
    check_count,
    check_flag,
    check_given,
    check_number,
    check_type,
    wait_limit,
)
from .._retry import RetryPolicy
from ..engines._base import Engine
from ..errors import ConfigurationError, UnsafeKeyError
from ..options import EditOptions, SegmentOptions
from ..sinks import Sink, open_sink
from ..sinks._common import check_key
from ..sources import SourceReader, SourceSpec
from ._handle import BatchHandle
from ._jobs import BatchReport, JobResult, Progress
from ._manifest import load_sources, replayable_sources
from ._progress import ProgressBar
from ._run import Batch

__all__ = ["BatchRemover", "default_spill_dir"]

logger = get_logger("photoroom_bg.batch")


def _local_file(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute in the working folder of now, a path from ``~`` in the home
    folder (as the sink's folder is taken): never a folder named "~" in the working one."""
    return Path(os.path.expanduser(path)).absolute()


def default_spill_dir() -> Path:
    """Where paid cut-outs wait when the sink does not take them:
    ``$PHOTOROOM_BG_SPILL_DIR``, else ``$XDG_CACHE_HOME/photoroom-bg/spill`` (or
    ``~/.cache/photoroom-bg/spill``). Files are named by output key, so any later run that
    wants the same output finds it there."""
    given = os.environ.get("PHOTOROOM_BG_SPILL_DIR")
    if given:
        return Path(given)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "photoroom-bg" / "spill"


class BatchRemover:
    """Turns many images into stored cut-outs, concurrently and within limits.

    The promise: every input ends with a record (stored, skipped, spilled, failed with a
    typed error, or cancelled); no cut-out that was paid for is thrown away; an image is not
    paid for twice unless the server may have billed a call whose answer was lost (counted
    in the report); nothing waits forever.

    Args:
        engine: what makes the cut-outs: an :class:`~photoroom_bg.Engine` (e.g.
            :class:`~photoroom_bg.LocalEngine`), an :class:`~photoroom_bg.AsyncPhotoroomClient`
            (wrapped in a :class:`~photoroom_bg.PhotoroomEngine`), or ``None`` for the Photoroom
            API with the key from ``api_key`` / ``$PHOTOROOM_API_KEY``.
        sink: where outputs go: a :class:`~photoroom_bg.sinks.Sink`, or a string for
            :func:`~photoroom_bg.sinks.open_sink` (``"./out"``, ``"s3://bucket/prefix"``,
            ``"memory://"``), opened once and kept as :attr:`sink`, so its outputs can be
            read afterwards and a second run skips them.
        options: :class:`~photoroom_bg.SegmentOptions` (default) or
            :class:`~photoroom_bg.EditOptions`, applied to every image.
        concurrency: images processed at once (and at most that many held in memory).
        requests_per_minute: budget shared by all jobs of an engine that bills, such as the
            API (``None`` or ``float("inf")``: no client-side limit; local engines are never
            limited). The default, 500, is Photoroom's default per-account limit (about 8
            images a second); accounts can have it raised: raise this with it. When the
            server still answers 429, the batch sends fewer calls at once and grows back as
            they succeed.
        max_retries: engine retries per job for failures a retry may fix (429, 5xx,
            connection errors, timeouts). Other errors fail the job at once.
        retry_policy: backoff delays, the ``Retry-After`` cap and whether failures the server
            may have billed are retried (:class:`~photoroom_bg.RetryPolicy`); by default the
            policy of the given client, else ``RetryPolicy()``.
        key_template: output key naming (:class:`~photoroom_bg.sinks.KeyTemplate` or its
            template string); default ``{stem}-{digest12}.{ext}``. The digest covers the
            input's bytes, the options and the engine (a ``local:u2netp`` preview never
            stands in for a Photoroom cut-out, nor the reverse).
        skip_existing: skip inputs whose output key already exists, without calling the engine.
        manifest: a JSON-lines file recording every finished job; on a re-run its stored
            keys are skipped without even asking the sink.
        manifest_key: also keep the manifest in the sink under this key (for workers
            without a lasting disk): read at the start to skip what is recorded there, and
            written back, with this run's records appended, when the batch ends.
        spill_dir: where paid cut-outs wait when the sink does not take them (see
            :func:`default_spill_dir`); any later run for the same outputs stores them from
            there without calling the engine.
        store_retry_budget: seconds a put is retried after a storage error before the
            cut-out is spilled.
        store_timeout: seconds one call to the sink may take (a sink that hangs: a stuck
            network file system, a server that never answers) before it counts as failed: a
            put's cut-out is then spilled, a look-up fails its job unpaid, so that the batch
            ends, and ``cancel()`` with it.
        sink_outage_budget: seconds the batch waits for an unreachable sink, all workers
            paused, before it stops with that reason.
        engine_outage_budget: seconds jobs keep trying to connect to an engine that has
            answered in this batch and then stopped taking connections (a restart, a network
            blip), without spending their ``max_retries``; counted from the first failed
            connection since the last answer. Past it the batch stops: inputs not yet made
            end ``cancelled``, for a later run.
        exit_timeout: at interpreter exit with a submitted batch still running, seconds
            granted to the jobs in flight to store what they made (``float("inf")``: as
            long as they take).
        progress: show a progress bar (terminal or Jupyter; needs ``tqdm``).
        on_result: called with each :class:`JobResult` as it finishes. For :meth:`submit`,
            in a worker thread, one call at a time in the order jobs end (so a slow one
            holds no answer up), and the worker whose job it was takes its next input once
            it has returned; for :meth:`run`, on the caller's event loop. An ``Exception``
            it raises is logged; anything else (``sys.exit()``) stops the batch, and is
            raised by ``wait()`` or ``run()`` once it has ended.
        on_progress: called with a :class:`Progress` after each job (and after
            ``on_result``), as that job ended, in the same way.
        reader: a :class:`~photoroom_bg.sources.SourceReader` (SSRF policy, byte cap, S3
            settings); by default a safe one that refuses private networks.
        url_passthrough: with :class:`~photoroom_bg.EditOptions`, let Photoroom fetch
            ``http(s)`` inputs itself (``GET /v2/edit?imageUrl=``); keys then hash the URL.
        keep_results: how many finished jobs the handle and the report keep: the latest
            ``keep_results`` failures and as many other jobs (default 1,000, about 1 KB
            each: no input bytes are kept); ``True`` keeps all, ``False`` none. Counts stay
            exact; the manifest and the sink are the complete record; ``as_completed()``
            sees every job regardless.
        api_key, base_url, timeout: for the default engine (an engine or client given is
            used with its own): the key (default ``$PHOTOROOM_API_KEY``), where calls go,
            and each call's timeout in seconds (``None``: no limit; default
            ``$PHOTOROOM_TIMEOUT``, else 120 s, 10 s to connect).
        track_credits: also ask the account balance before and after the batch, to report
            ``credits_spent``. Off by default: the two reads are two round trips whatever
            the batch's size (a one-image batch takes about three times as long), and
            ``billed_calls`` already counts what the batch was billed for. A read that
            fails or takes over 10 s holds no call back: the batch goes on, logs a
            warning and reports ``credits_spent=None``.

    Attributes:
        sink: the :class:`~photoroom_bg.sinks.Sink` outputs go to.
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
        retry_policy: RetryPolicy | None = None,
        key_template: KeyTemplate | str | None = None,
        skip_existing: bool = True,
        manifest: str | os.PathLike[str] | None = None,
        manifest_key: str | None = None,
        spill_dir: str | os.PathLike[str] | None = None,
        store_retry_budget: float = 30.0,
        store_timeout: float = 300.0,
        sink_outage_budget: float = 120.0,
        engine_outage_budget: float = 120.0,
        exit_timeout: float = 30.0,
        progress: bool = False,
        on_result: Callable[[JobResult], object] | None = None,
        on_progress: Callable[[Progress], object] | None = None,
        reader: SourceReader | None = None,
        url_passthrough: bool = False,
        keep_results: bool | int = 1000,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: Timeout | NotGiven = NOT_GIVEN,
        track_credits: bool = False,
    ) -> None:
        check_count("concurrency", concurrency, 1)
        check_count("max_retries", max_retries, 0)
        for flag, value in (
            ("skip_existing", skip_existing),
            ("progress", progress),
            ("url_passthrough", url_passthrough),
            ("track_credits", track_credits),
        ):
            check_flag(flag, value)
        if requests_per_minute is not None:
            # 0, a negative number or NaN would silently mean "no limit"
            check_number("requests_per_minute", requests_per_minute, positive=True)
        check_number("store_retry_budget", store_retry_budget)
        check_number("store_timeout", store_timeout, positive=True)
        check_number("sink_outage_budget", sink_outage_budget)
        check_number("engine_outage_budget", engine_outage_budget)
        check_number("exit_timeout", exit_timeout)
        if not isinstance(keep_results, bool):
            check_count("keep_results", keep_results, 0, most=None)  # more: every job
        path = ((str, os.PathLike), "a path (a str or os.PathLike) or None")
        for name, given, (types, what) in (
            ("manifest", manifest, path),
            ("manifest_key", manifest_key, (str, "a key (a str) or None")),
            ("spill_dir", spill_dir, path),
            ("base_url", base_url, (str, "a URL (a str) or None")),
        ):
            check_given(name, given)
            check_type(name, given, types, what)
        if manifest_key is not None:
            try:  # refused now, naming the setting, not as a sink that "is not usable"
                check_key(manifest_key)
            except UnsafeKeyError as exc:
                raise ConfigurationError(f"manifest_key {manifest_key!r}: {exc}") from None
        _check_engine(engine)
        if engine is None:  # a bad timeout, or $PHOTOROOM_TIMEOUT, fails here, not mid-batch
            BaseClient._as_timeout(_env_timeout() if isinstance(timeout, NotGiven) else timeout)
        check_type("reader", reader, SourceReader, "a SourceReader or None")
        check_type("retry_policy", retry_policy, RetryPolicy, "a RetryPolicy or None")
        check_type("key_template", key_template, (str, KeyTemplate), "a str, a KeyTemplate or None")
        check_callback("on_result", on_result, plain=True)
        check_callback("on_progress", on_progress, plain=True)
        if url_passthrough and not isinstance(options, EditOptions):
            raise ConfigurationError("url_passthrough needs EditOptions (GET /v2/edit)")
        self.engine = engine
        self._owns_sink = isinstance(sink, (str, os.PathLike))
        self.sink: Sink = open_sink(sink)
        self.options = options if options is not None else SegmentOptions()
        self.concurrency = concurrency
        self.requests_per_minute = requests_per_minute
        self.max_retries = max_retries
        self.retry_policy = retry_policy
        self.key_template = (
            (key_template if isinstance(key_template, KeyTemplate) else KeyTemplate(key_template))
            if key_template is not None
            else KeyTemplate()
        )
        self.skip_existing = skip_existing
        # taken in the working folder of now, as the sink's folder is: a notebook's %cd
        # before a submit() must not split one remover's files between two folders
        self.manifest = _local_file(manifest) if manifest is not None else None
        self.manifest_key = manifest_key
        self.spill_dir = _local_file(spill_dir if spill_dir is not None else default_spill_dir())
        self.store_retry_budget = store_retry_budget
        self.store_timeout = store_timeout
        self.sink_outage_budget = sink_outage_budget
        self.engine_outage_budget = engine_outage_budget
        self.exit_timeout = exit_timeout
        # run by the photoroom-bg command: what it says at exit is advice for the command
        self._command = False
        self.progress_bar = progress
        self.on_result = on_result
        self.on_progress = on_progress
        self.reader = reader
        self.url_passthrough = url_passthrough
        # more than any process can hold is "every job" (a deque takes no larger bound)
        self.keep_results = (
            keep_results if isinstance(keep_results, bool) else min(keep_results, sys.maxsize)
        )
        self.track_credits = track_credits
        self._api_key = api_key
        self._base_url = base_url
        self._timeout = timeout
        self._options_digest = options_digest(self.options)
        if progress:
            _tqdm()  # fail now, not mid-batch, when the extra is missing

    def __repr__(self) -> str:
        return (
            f"BatchRemover(engine={self.engine!r}, sink={self.sink!r}, "
            f"options={type(self.options).__name__}, concurrency={self.concurrency}, "
            f"requests_per_minute={self.requests_per_minute})"
        )

    def _retry_policy(self) -> RetryPolicy:
        if self.retry_policy is not None:
            return self.retry_policy
        client = getattr(self.engine, "client", self.engine)
        if isinstance(client, AsyncPhotoroomClient):
            return client.retry_policy
        return RetryPolicy()

    def submit(self, sources: SourceSpec) -> BatchHandle:
        """Start processing ``sources`` and return a :class:`BatchHandle` at once.

        Works the same from scripts, notebooks (a running event loop in this thread) and
        async code: the batch runs on photoroom_bg's background event loop. Use
        ``handle.wait()`` or ``await handle``.

        Raises:
            PhotoroomBGError: the batch cannot start (a manifest that cannot be written, a
                sink that does not answer, options the engine cannot take), before anything
                is billed.
        """
        return self._submit(sources, retry=False)

    def _submit(self, sources: SourceSpec, *, retry: bool) -> BatchHandle:
        handle = BatchHandle(keep_results=self.keep_results)
        make_bar = self._bar_maker()
        batch = Batch(self, sources, handle, retry=retry)
        _loop.run_sync(batch.open())
        # made here, so that Jupyter shows it in the calling cell; and only once the batch has
        # opened, so that a batch that cannot start shows no bar before its error
        if make_bar is not None:
            try:
                batch.bar = make_bar()
            except BaseException:
                _loop.run_sync(batch.close_unstarted(), cancel=False)
                raise
        future: Future[BatchReport] = _loop.submit(batch.process())
        loop = _loop.background_loop()

        def cancel(reason: str) -> None:
            loop.call_soon_threadsafe(batch.stop, reason)

        handle._bind(future, cancel, lambda again: self._submit(again, retry=True))
        _watch_at_exit(batch, future, self.exit_timeout)
        return handle

    async def run(self, sources: SourceSpec) -> BatchReport:
        """Process ``sources`` on the current event loop and return the report.

        For async services that own their engine and sink objects on this loop; results
        arrive through ``on_result`` / ``on_progress``. Cancelling the awaiting task stops
        the batch: calls already answered are stored, the rest end with the task (a call
        under way may have been billed). To stop gracefully, end ``sources`` (an async
        generator that returns once a stop is asked for): the calls under way then finish
        and are stored, and the report covers the inputs taken.
        """
        handle = BatchHandle(keep_results=self.keep_results)
        make_bar = self._bar_maker()
        batch = Batch(self, sources, handle)
        await batch.open()  # a batch that cannot start shows no progress bar before its error
        if make_bar is not None:
            try:
                batch.bar = make_bar()
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await batch.close_unstarted()
                raise
        report = await batch.process()
        if batch.raised_to_stop is not None:  # sys.exit() in a callback, say: now it goes on
            raise batch.raised_to_stop
        return report

    def resume(
        self,
        sources: SourceSpec | None = None,
        *,
        manifest: str | os.PathLike[str] | None = None,
    ) -> BatchHandle:
        """Finish an interrupted batch: what the manifest (or the sink) already holds is
        skipped without calling the engine, cut-outs waiting in the spill folder are stored,
        and the rest is processed.

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
            sources = load_sources(_local_file(path))
        if path is not None and _local_file(path) != self.manifest:
            return _with_changes(self, manifest=path).submit(sources)
        return self.submit(sources)

    def _bar_maker(self) -> Callable[[], ProgressBar] | None:
        """What makes the progress bar (``None``: no bar); a missing tqdm is refused now."""
        if not self.progress_bar:
            return None
        tqdm = _tqdm()
        return lambda: ProgressBar(tqdm)

    async def aclose(self) -> None:
        """Close the sink if this remover opened it from a string."""
        if self._owns_sink:
            await self.sink.aclose()

    def close(self) -> None:
        """:meth:`aclose` for sync code."""
        if self._owns_sink:
            _loop.run_sync(self.sink.aclose(), cancel=False)

    def __enter__(self) -> BatchRemover:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> BatchRemover:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _check_engine(engine: object) -> None:
    """An engine (anything with ``process()``), an async client, or ``None``."""
    if engine is None or isinstance(engine, AsyncPhotoroomClient):
        return
    if callable(getattr(engine, "process", None)):
        return
    hint = ""
    if type(engine).__name__ == "PhotoroomClient":
        hint = " (a batch runs on an event loop: give it an AsyncPhotoroomClient)"
    raise ConfigurationError(
        "engine must be an Engine (an object with an async process()), an "
        f"AsyncPhotoroomClient or None, not {type(engine).__name__}{hint}"
    )


def _with_changes(remover: BatchRemover, **changes: Any) -> BatchRemover:
    """A shallow copy of ``remover`` with some attributes replaced."""
    clone = copy.copy(remover)
    clone._owns_sink = False  # the original closes it
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


# -- interpreter exit -----------------------------------------------------------------------

_running: weakref.WeakKeyDictionary[Batch, tuple[Future[BatchReport], float]] = (
    weakref.WeakKeyDictionary()
)
_running_lock = threading.Lock()
_exit_hook_installed = False


#: At interpreter exit, past a batch's ``exit_timeout``, seconds it is given to spill the
#: cut-outs in hand, record its jobs and close.
EXIT_CLEANUP_SECONDS = 10.0


def _watch_at_exit(batch: Batch, future: Future[BatchReport], timeout: float) -> None:
    global _exit_hook_installed
    with _running_lock:
        _running[batch] = (future, timeout)
        if not _exit_hook_installed:
            _exit_hook_installed = True
            _loop.at_exit(_finish_at_exit)
    future.add_done_callback(lambda _: _forget(batch))


def _forget_in_child() -> None:
    """In a forked child: its parent's batches run in the parent, not here (the child has no
    thread of their event loop), so its exit must not wait for them, nor warn about them."""
    global _running_lock
    _running_lock = threading.Lock()  # another thread may have held it at the fork
    _running.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _forget(batch: Batch) -> None:
    with _running_lock:
        _running.pop(batch, None)


def _finish_at_exit() -> None:
    """A script ended with submitted batches still running: start no new job, let the
    jobs in flight store what they made (bounded), flush the manifests, say how to resume."""
    with _running_lock:
        running = list(_running.items())
    if not running:
        return
    loop = _loop.background_loop()
    for batch, _ in running:
        loop.call_soon_threadsafe(batch.stop, "the interpreter is exiting")
    for batch, (future, timeout) in running:
        with contextlib.suppress(Exception):  # reported below from the handle's counts
            future.result(wait_limit("exit_timeout", timeout))  # inf: wait for every job
        if not future.done():
            # past the grace period: the cut-outs in hand go to the spill folder (a put
            # under way is cut short), the calls under way are cancelled, and the batch
            # records what it has before it closes
            loop.call_soon_threadsafe(batch.give_up, "the interpreter is exiting")
            future.cancel()  # after give_up: the loop runs them in this order
            batch.ended.wait(EXIT_CLEANUP_SECONDS)
        progress = batch.handle.progress
        left = (
            (progress.total or 0) - progress.processed
            if progress.total is not None
            else progress.cancelled + progress.pending
        )
        if future.done() and not future.cancelled() and not left and not progress.spilled:
            continue  # it ended within the grace period with nothing left: nothing to say
        if batch.r._command:
            where = "run the same command again"
        elif batch.r.manifest is None:
            where = "submit the same sources again"
        elif replayable_sources(batch.spec) is None:  # bytes, a generator: not recorded
            where = (
                f"resume with BatchRemover(..., manifest={str(batch.r.manifest)!r})"
                ".resume(sources), given the same sources again (bytes, file objects and "
                "generators are not recorded)"
            )
        else:
            where = f"resume with BatchRemover(..., manifest={str(batch.r.manifest)!r}).resume()"
        if batch.cut_short:
            paid = (
                f"{batch.cut_short} call(s) to {batch.engine.name} under way were cut short: "
                "they may have been billed, and a resume makes those images again"
            )
        else:
            paid = "nothing is paid twice"
        logger.warning(
            "%s: %d stored, "
            "%d spilled, %d failed, %d not processed; %s to finish it (stored and spilled "
            "outputs are not made again; %s)",
            "stopped before the batch ended"
            if batch.r._command
            else "the interpreter exited before the batch ended (no wait() call?)",
            progress.stored,
            progress.spilled,
            progress.failed,
            left,
            where,
            paid,
        )
