"""Executors: what runs ``/api/v2`` jobs.

The service hands an executor a :class:`JobSpec` (sources, options, where the manifest goes);
the executor runs it with :class:`~photoroom_bg.BatchRemover` and tells the service when it has
ended. :class:`LocalExecutor` runs jobs in this process, on the service's event loop;
:class:`~photoroom_bg.service.PrefectExecutor` (``prefect``) hands them to Prefect task
workers. Another executor implements the same :class:`Executor` protocol and is registered in
:data:`EXECUTORS` under the name ``PHOTOROOM_BG_EXECUTOR`` selects. Per-item status is never
kept by an executor: it is what BatchRemover records, in manifests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs

from .._client import AsyncPhotoroomClient
from .._logs import get_logger
from .._retry import RetryPolicy
from ..batch import BatchRemover, BatchReport, JobResult, Progress
from ..batch._calls import Stopped
from ..engines.photoroom import PhotoroomEngine
from ..errors import ConfigurationError, ObjectNotFoundError
from ..models import ImageResult
from ..options import EditOptions, SegmentOptions
from ..sinks import Sink
from ..sources import ImageSource, SourceReader
from ._settings import ServiceSettings

__all__ = [
    "EXECUTORS",
    "OUTPUT_TEMPLATE",
    "Executor",
    "ExecutorContext",
    "JobSpec",
    "LiveJob",
    "LocalExecutor",
    "make_executor",
]

logger = get_logger("photoroom_bg.service")

#: output keys: one folder, named by content and options, so a job never pays for an image
#: any earlier request or job already stored with the same options
OUTPUT_TEMPLATE = "outputs/{stem}-{digest12}.{ext}"


@attrs.frozen
class ExecutorContext:
    """What an executor may use: the settings and the service's shared, pooled clients."""

    settings: ServiceSettings
    sink: Sink
    client: AsyncPhotoroomClient | None
    reader: SourceReader

    def remover(
        self,
        options: SegmentOptions | EditOptions,
        *,
        sink: Sink | None = None,
        concurrency: int | None = None,
        own_client: bool = False,
        engine: PhotoroomEngine | None = None,
        **kwargs: Any,
    ) -> BatchRemover:
        """A BatchRemover with the service's settings and reader, sharing the service's
        Photoroom client, or with a client of its own (``own_client``, for a long job), or
        calling Photoroom through ``engine``."""
        s = self.settings
        return BatchRemover(
            engine if engine is not None else None if own_client else self.client,
            sink=sink if sink is not None else self.sink,
            options=options,
            concurrency=concurrency or s.concurrency,
            requests_per_minute=s.photoroom_requests_per_minute or None,
            max_retries=s.max_retries,
            retry_policy=RetryPolicy(
                initial_delay=s.retry_backoff, retry_possibly_billed=s.retry_possibly_billed
            ),
            key_template=OUTPUT_TEMPLATE,
            # paid cut-outs the sink refused wait here, and a resumed job stores them
            spill_dir=Path(s.state_dir) / "spill",
            reader=self.reader,
            track_credits=False,
            api_key=s.api_key,
            base_url=s.base_url,
            timeout=s.timeout,
            **kwargs,
        )


class ServiceStopping(BaseException):
    """Raised in a job's batch in place of a new Photoroom call once the service stops: a
    request to stop (not an error), so the batch starts no more calls, lets those under way
    finish and store their cut-outs, records the inputs it had not started as cancelled (the
    resumed job makes them), and raises it to its caller once it has ended."""


class StoppableEngine(PhotoroomEngine):
    """The Photoroom engine of a job running here: makes no new call once ``stopping()``
    (the service stops: the job resumes at its next start) or ``cancelled()`` (``DELETE``:
    the image ends ``cancelled``).

    Each call, retries included, asks first; inputs the batch had already taken from the job's
    sources would otherwise each be paid for after the stop or the cancel began."""

    def __init__(
        self,
        stopping: Callable[[], bool],
        cancelled: Callable[[], bool] = lambda: False,
        **client_kwargs: Any,
    ) -> None:
        super().__init__(**client_kwargs)
        self._stopping = stopping
        self._cancelled = cancelled

    def _check(self) -> None:
        if self._stopping():
            raise ServiceStopping("the service is stopping")
        if self._cancelled():  # the batch ends this image "cancelled", unpaid, and goes on
            raise Stopped("the job was cancelled")

    async def process(self, image: bytes, options: SegmentOptions | EditOptions) -> ImageResult:
        """Remove the background with the API, unless the service is stopping."""
        self._check()
        return await super().process(image, options)

    async def process_url(self, url: str, options: EditOptions) -> ImageResult:
        """Let Photoroom fetch ``url``, unless the service is stopping."""
        self._check()
        return await super().process_url(url, options)


@attrs.frozen
class JobSpec:
    """One job to run.

    Attributes:
        job_id: the job.
        sources: the inputs, in order: ``{"kind": "url", "url": ...}`` or
            ``{"kind": "upload", "key": <sink key>, "name": <file name>}``.
        options: the options of every image.
        manifest_key: where the manifest goes in the sink.
        manifest_path: a local manifest file written as items finish, or ``None``.
    """

    job_id: str
    sources: list[dict[str, str]]
    options: SegmentOptions | EditOptions
    manifest_key: str
    manifest_path: Path | None = None


class LiveJob:
    """A job running in this process, as BatchRemover reports it: results as they finish,
    the latest progress snapshot, and the report at the end."""

    def __init__(self, job_id: str, image_count: int) -> None:
        self.job_id = job_id
        self.image_count = image_count
        self.results: list[JobResult] = []
        self.progress: Progress | None = None
        self.report: BatchReport | None = None
        self.summary: dict[str, Any] | None = None  # the report of a job run elsewhere
        self.error: BaseException | None = None
        self.cancel_requested = False
        self.stopping = False  # the service is stopping: no more inputs, the job resumes later
        self.ended = False
        self.recorded = asyncio.Event()  # set once the service has recorded the end
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"LiveJob({self.job_id!r}, finished={len(self.results)}/{self.image_count})"

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def add_result(self, result: JobResult) -> None:
        """BatchRemover's ``on_result``."""
        self.results.append(result)
        self._notify()

    def set_progress(self, progress: Progress) -> None:
        """BatchRemover's ``on_progress``."""
        self.progress = progress

    def end(self, report: BatchReport | None, error: BaseException | None) -> None:
        """The run is over."""
        self.report, self.error, self.ended = report, error, True
        self._notify()

    def request_cancel(self) -> None:
        """Start no more images; those running finish and are stored."""
        self.cancel_requested = True

    def takes_no_more(self) -> bool:
        """True once the job is to start no more images (cancelled, or the service stops)."""
        return self.cancel_requested or self.stopping

    async def wait_for_change(self, seen: int, timeout: float) -> None:
        """Return once more than ``seen`` results exist or the job ended, or after
        ``timeout`` seconds."""
        if len(self.results) > seen or self.ended:
            return
        event = self._changed
        with contextlib.suppress(asyncio.TimeoutError):  # not TimeoutError before 3.11
            await asyncio.wait_for(event.wait(), timeout)


OnEnd = Callable[[LiveJob], Awaitable[None]]


#: How long a stopping service waits for the calls under way to finish and be stored
#: (within the usual 30 s between SIGTERM and SIGKILL, after uvicorn's 10 s for connections).
STOP_GRACE_SECONDS = 20.0


async def drain(tasks: set[asyncio.Task[Any]], grace: float, what: str) -> None:
    """Wait up to ``grace`` seconds for ``tasks`` (their calls under way) to end; then
    cancel those left and wait for each to end."""
    if tasks:
        logger.info(
            "stopping: waiting up to %g s for %d %s to finish their calls under way",
            grace,
            len(tasks),
            what,
        )
        await asyncio.wait(tasks, timeout=grace)
    await cancel_and_wait(tasks)


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for each to end (closing what it holds)."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class JobTasks:
    """An executor's tasks, one per job it runs or follows in this process, with each job's
    in-process view; :meth:`cancel_all` is how the executor stops them all."""

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[asyncio.Task[None], LiveJob]] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, task: asyncio.Task[None], live: LiveJob) -> None:
        """Keep the task of ``live``'s job."""
        self._jobs[live.job_id] = (task, live)

    def discard(self, job_id: str) -> None:
        """Forget the job (its task is ending)."""
        self._jobs.pop(job_id, None)

    def live(self, job_id: str) -> LiveJob | None:
        """The job's in-process view, if it has a task here."""
        entry = self._jobs.get(job_id)
        return entry[1] if entry else None

    def ids(self) -> list[str]:
        """The jobs with a task here."""
        return list(self._jobs)

    async def stop_all(self, grace: float) -> None:
        """Let every job's calls under way finish and store their cut-outs, starting no
        more images, for up to ``grace`` seconds; then cancel what is left. A call cancelled
        after it was sent may be billed, and its image is paid again when the job resumes:
        the grace is what keeps a graceful stop from paying twice."""
        for _, live in self._jobs.values():
            live.stopping = True
        await drain({task for task, _ in self._jobs.values()}, grace, "job(s)")
        await self.cancel_all()  # any that began meanwhile

    async def cancel_all(self) -> None:
        """Cancel every task and wait for each to end (closing what it holds)."""
        await cancel_and_wait([task for task, _ in self._jobs.values()])


@runtime_checkable
class Executor(Protocol):
    """Runs jobs; see the module docs.

    Attributes:
        name: the executor's name in :data:`EXECUTORS` and in job records.
        in_process: ``True`` when jobs run in the service's own processes: the service then
            claims them on its host and finishes those whose process died. An executor that
            hands jobs to workers elsewhere leaves retries to them (``False``).
    """

    name: str
    in_process: bool

    async def start(self, spec: JobSpec, on_end: OnEnd) -> LiveJob | None:
        """Start ``spec``; call ``on_end`` when it has ended (not when the service stops).

        Returns the in-process view of the job, or ``None`` when it runs elsewhere.
        """
        ...

    async def follow(self, spec: JobSpec, on_end: OnEnd) -> LiveJob | None:
        """Watch a job this executor started before (on any replica) and call ``on_end``
        when it ends; never starts it again. Only called when :attr:`in_process` is
        ``False`` (in-process jobs are claimed and resumed instead)."""
        ...

    def live(self, job_id: str) -> LiveJob | None:
        """The in-process view of a running job, if this process runs it."""
        ...

    def running(self) -> list[str]:
        """The jobs this process runs."""
        ...

    async def cancel(self, job_id: str) -> bool:
        """Ask a job this executor runs to stop; ``False`` when it does not run it."""
        ...

    async def records(self, job_id: str) -> list[dict[str, Any]] | None:
        """The job's per-input records (manifest fields, ``index`` = the input's index) when
        this executor keeps them elsewhere; ``None``: the service's manifest holds them."""
        ...

    async def check(self) -> str | None:
        """``None`` when ready to run jobs, else what is wrong (for the readiness check)."""
        ...

    async def aclose(self) -> None:
        """Stop every job it runs (they resume when the service starts again)."""
        ...


async def open_sources(
    refs: list[dict[str, str]], sink: Sink, stop: Callable[[], bool]
) -> AsyncIterator[Any]:
    """The job's inputs, one at a time, as BatchRemover sources; ends early once ``stop()``.

    URLs go to the SSRF-safe reader; uploads are read from the sink only when their turn
    comes, so memory holds at most the images in flight.
    """
    for ref in refs:
        if stop():
            return
        if ref.get("kind") == "upload":
            name = ref.get("name") or "upload"
            try:
                data = await sink.get(ref["key"])
            except ObjectNotFoundError:
                data = b""  # fails as an empty image, alone
            stem = os.path.splitext(os.path.basename(name))[0] or "upload"
            yield ImageSource("bytes", f"upload:{name}", stem, data)
        else:
            yield ref["url"]


class LocalExecutor:
    """Runs each job as a :meth:`BatchRemover.run` task on the service's event loop.

    The tasks belong to the executor: :meth:`aclose` cancels and awaits every one, so no job
    outlives the service (an interrupted job is finished by the next start).
    """

    name = "local"
    in_process = True

    def __init__(self, context: ExecutorContext) -> None:
        self.context = context
        self._jobs = JobTasks()

    def __repr__(self) -> str:
        return f"LocalExecutor(running={len(self._jobs)})"

    async def start(self, spec: JobSpec, on_end: OnEnd) -> LiveJob:
        """Run ``spec`` in a task of this executor's."""
        live = LiveJob(spec.job_id, len(spec.sources))
        s = self.context.settings
        engine = None
        if s.api_key:  # (without a key the batch fails the job, naming what is missing)
            # its pool serves this job's workers alone, closed with it
            engine = StoppableEngine(
                lambda: live.stopping,
                lambda: live.cancel_requested,
                api_key=s.api_key,
                base_url=s.base_url,
                timeout=s.timeout,
                max_retries=0,
            )
        remover = self.context.remover(
            spec.options,
            own_client=True,
            engine=engine,
            manifest=spec.manifest_path,
            manifest_key=spec.manifest_key,
            on_result=live.add_result,
            on_progress=live.set_progress,
            keep_results=False,
        )
        sources = open_sources(spec.sources, self.context.sink, live.takes_no_more)
        task = asyncio.create_task(self._run(remover, sources, live, on_end, engine))
        self._jobs.add(task, live)
        return live

    async def _run(
        self,
        remover: BatchRemover,
        sources: AsyncIterator[Any],
        live: LiveJob,
        on_end: OnEnd,
        engine: PhotoroomEngine | None,
    ) -> None:
        report, error = None, None
        try:
            report = await remover.run(sources)
        except asyncio.CancelledError:
            raise  # the service is stopping: the job stays claimed and resumes at start
        except ServiceStopping:
            return  # stopped with the service, its calls under way stored: it resumes at start
        except Exception as exc:
            logger.error("job %s failed", live.job_id, exc_info=exc)
            error = exc
        finally:
            self._jobs.discard(live.job_id)
            if engine is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(engine.aclose())
        cut_short = report is not None and report.total_count < live.image_count
        if live.stopping and not live.cancel_requested and cut_short:
            return  # stopped with the service, its calls under way stored: it resumes at start
        live.end(report, error)
        try:
            await on_end(live)
        except Exception:
            logger.exception("could not record the end of job %s", live.job_id)
        finally:
            live.recorded.set()

    async def follow(self, spec: JobSpec, on_end: OnEnd) -> None:
        """Nothing to follow: local jobs are claimed and resumed on their host."""
        return None

    def live(self, job_id: str) -> LiveJob | None:
        """The job's in-process view while it runs here."""
        return self._jobs.live(job_id)

    def running(self) -> list[str]:
        """Jobs running here."""
        return self._jobs.ids()

    async def cancel(self, job_id: str) -> bool:
        """Stop starting images of the job."""
        live = self.live(job_id)
        if live is None:
            return False
        live.request_cancel()
        return True

    async def records(self, job_id: str) -> None:
        """``None``: BatchRemover's manifest in the service's sink holds every record."""
        return None

    async def check(self) -> str | None:
        """Always ready: jobs run in this process."""
        return None

    async def aclose(self) -> None:
        """Stop every running job: the calls under way finish and are stored (for up to
        :data:`STOP_GRACE_SECONDS`), then what is left is cancelled; the jobs resume at the
        next start."""
        await self._jobs.stop_all(STOP_GRACE_SECONDS)


def _prefect_executor(context: ExecutorContext) -> Executor:
    from ._prefect import PrefectExecutor  # imports Prefect only when chosen

    return PrefectExecutor(context)


#: executor name -> factory; ``PHOTOROOM_BG_EXECUTOR`` picks one
EXECUTORS: dict[str, Callable[[ExecutorContext], Executor]] = {
    "local": LocalExecutor,
    "prefect": _prefect_executor,
}


def make_executor(context: ExecutorContext) -> Executor:
    """The executor the settings name."""
    name = context.settings.executor
    factory = EXECUTORS.get(name)
    if factory is None:
        raise ConfigurationError(
            f"unknown executor {name!r} (PHOTOROOM_BG_EXECUTOR); use one of {sorted(EXECUTORS)}"
        )
    return factory(context)
