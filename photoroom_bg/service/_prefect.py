"""PrefectExecutor: ``/api/v2`` jobs as Prefect flow runs whose shards run on task workers.

``PHOTOROOM_BG_EXECUTOR=prefect`` hands each job to :class:`~photoroom_bg.prefect.PrefectJobs`
under the service's own job id: its sources become references every worker can read (the
URLs as given, uploads as the sink objects the service keeps them in), its outputs go to the
service's sink. What each input became is read from the job's shard manifests in that sink,
mapped back to the input's index; the job's end comes from its record and its flow run's
Prefect state. The Photoroom key never becomes a parameter: workers read it from a Prefect
``Secret`` block (``PHOTOROOM_BG_PREFECT_API_KEY_SECRET``) or their own environment.

Where the flow runs decides who recovers it. By default the flow run is coordinated in the
service's process (its shards still go to task workers): the service claims the job on its
host like a local job, and a restarted service resumes the jobs its previous process was
coordinating (stored outputs are skipped, never paid for twice). With
``PHOTOROOM_BG_PREFECT_DEPLOYMENT`` the flow runs wherever that deployment is served, and
the service only watches it: any replica asked about a job it does not watch starts watching.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from typing import TYPE_CHECKING, Any

from .._logs import get_logger
from ..errors import ConfigurationError, PhotoroomBGError
from ._executor import (
    STOP_GRACE_SECONDS,
    ExecutorContext,
    JobSpec,
    JobTasks,
    LiveJob,
    OnEnd,
)
from ._store import JobStore as ServiceJobStore

if TYPE_CHECKING:
    from ..prefect import JobInfo, PrefectJobs

__all__ = ["JobEndedWithoutSummary", "PrefectExecutor", "shared_sink_uri"]

logger = get_logger("photoroom_bg.service")

# how often a watcher reads a job's status; a crashed coordinator is resumed at most this
# many times in a row before the job is recorded as failed
_POLL_SECONDS = 1.0
_MAX_RESUMES = 3
# summary fields that name server-side places (the sink's path, inputs as sink objects)
_SERVER_SIDE_FIELDS = frozenset({"sink", "manifests", "failures"})
# how long closing waits for the flow runs coordinated here to stop by themselves: as long
# as a local job's calls under way are given
_CLOSE_SECONDS = STOP_GRACE_SECONDS


class JobEndedWithoutSummary(PhotoroomBGError):
    """A job's flow run ended (failed, crashed) before it could record what it did."""


def shared_sink_uri(sink: str) -> str:
    """The service's sink as a URI every worker can open: ``s3://bucket/prefix`` as is, a
    folder as an absolute path (workers must see the same folder, e.g. a shared volume).

    Raises:
        ConfigurationError: ``memory://``, which no other process can reach.
    """
    if sink.startswith("s3://"):
        return sink.rstrip("/")
    if sink.startswith("memory://"):
        raise ConfigurationError(
            "PHOTOROOM_BG_EXECUTOR=prefect needs a sink its workers can reach: an s3:// URI "
            "or a shared folder, not memory://"
        )
    path = sink[len("file://") :] if sink.startswith("file://") else sink
    return os.path.abspath(os.path.expanduser(path))


def _reference(sink_uri: str, ref: dict[str, str]) -> str:
    """A service source as a reference a worker reads: an upload is its sink object."""
    if ref.get("kind") == "upload":
        key = ref["key"]
        if sink_uri.startswith("s3://"):
            return f"{sink_uri}/{key}"
        return os.path.join(sink_uri, *key.split("/"))
    return ref["url"]


def _label(ref: dict[str, str]) -> str:
    """The source as the service shows it (never a server path or bucket)."""
    if ref.get("kind") == "upload":
        return f"upload:{ref.get('name') or 'upload'}"
    return ref.get("url", "")


class PrefectExecutor:
    """Runs ``/api/v2`` jobs on Prefect; see the module docs.

    It owns one :class:`~photoroom_bg.prefect.PrefectJobs`, held open by a task of its own
    (flow runs it coordinates belong to it), and one watcher task per job it follows;
    :meth:`aclose` stops them all. Jobs it coordinated are resumed by the next start.
    """

    name = "prefect"

    def __init__(self, context: ExecutorContext) -> None:
        try:
            from ..prefect import PrefectJobs
        except ImportError as exc:
            raise ConfigurationError(
                "PHOTOROOM_BG_EXECUTOR=prefect needs Prefect 3: "
                "pip install 'photoroom-bg[service,prefect]'"
            ) from exc
        from ..prefect._environment import s3_endpoint

        s = context.settings
        self.context = context
        self.sink_uri = shared_sink_uri(s.sink)
        if self.sink_uri.startswith("s3://") and s.s3_endpoint_url and not s3_endpoint():
            # the flow and in-process shards open the sink the way a worker does
            os.environ["AWS_ENDPOINT_URL_S3"] = s.s3_endpoint_url
        #: jobs coordinated here are claimed and resumed like local ones
        self.in_process = s.prefect_deployment is None
        defaults: dict[str, Any] = {
            "shard_size": s.prefect_shard_size,
            "concurrency": s.concurrency,
            "api_key_secret": s.prefect_api_key_secret,
            "requests_per_minute": s.photoroom_requests_per_minute or None,
            "max_retries": s.max_retries,
            "retry_backoff": s.retry_backoff,
            "retry_possibly_billed": s.retry_possibly_billed,
            "max_source_bytes": s.max_source_bytes,
            # PHOTOROOM_TIMEOUT=none (no limit) is no JSON: each worker's own then applies
            "call_timeout": s.timeout if math.isfinite(s.timeout) else None,
        }
        self.jobs: PrefectJobs = PrefectJobs(
            self.sink_uri,
            deferred=s.prefect_deferred,
            deployment=s.prefect_deployment,
            **defaults,
        )
        self.store = ServiceJobStore(context.sink)
        self._watchers = JobTasks()
        self._sources: dict[str, list[dict[str, str]]] = {}
        self._holder: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()
        self._closing = asyncio.Event()
        self._open_error: BaseException | None = None

    def __repr__(self) -> str:
        return (
            f"PrefectExecutor(sink={self.sink_uri!r}, deferred={self.jobs.deferred}, "
            f"deployment={self.jobs.deployment!r}, watching={len(self._watchers)})"
        )

    # -- the PrefectJobs this executor holds open ---------------------------------------------

    async def _hold(self) -> None:
        try:
            async with self.jobs:
                self._opened.set()
                await self._closing.wait()
        except BaseException as exc:
            self._open_error = exc
            self._opened.set()
            raise

    async def _ensure_open(self) -> None:
        if self._holder is None:
            self._holder = asyncio.create_task(self._hold())
        await self._opened.wait()
        if self._open_error is not None:
            raise ConfigurationError(f"cannot run Prefect jobs: {self._open_error}")

    # -- the Executor protocol ----------------------------------------------------------------

    async def start(self, spec: JobSpec, on_end: OnEnd) -> LiveJob:
        """Start the job as a flow run, or, when it already exists (a job this host was
        running when its process died), take it over: resume it, or record its end."""
        live = await self._open_job(spec, on_end, create=True)
        assert live is not None
        return live

    async def follow(self, spec: JobSpec, on_end: OnEnd) -> LiveJob | None:
        """Watch a job started on Prefect before (by any replica), resuming it if it
        crashed; ``None`` when Prefect has no such job."""
        return await self._open_job(spec, on_end, create=False)

    async def _open_job(self, spec: JobSpec, on_end: OnEnd, *, create: bool) -> LiveJob | None:
        following = self._watchers.live(spec.job_id)
        if following is not None:
            return following
        await self._ensure_open()
        live = LiveJob(spec.job_id, len(spec.sources))
        existing = await self._status(spec.job_id)
        if existing is not None:
            await self._take_over(existing, live)
        elif create:
            refs = [_reference(self.sink_uri, ref) for ref in spec.sources]
            await self.jobs.start(refs, spec.options, job_id=spec.job_id)
        else:
            return None
        self._sources[spec.job_id] = list(spec.sources)
        task = asyncio.create_task(self._watch(live, on_end))
        self._watchers.add(task, live)
        return live

    async def _status(self, job_id: str) -> JobInfo | None:
        """The job's status on Prefect, ``None`` when Prefect has never had it."""
        from ..errors import ObjectNotFoundError

        try:
            return await self.jobs.status(job_id)
        except ObjectNotFoundError:
            return None

    async def _take_over(self, info: JobInfo, live: LiveJob) -> None:
        """A job this service started before: resume it when nobody coordinates it."""
        job_id = info.job_id
        user_cancelled = await self.store.cancel_requested(job_id)
        live.cancel_requested = user_cancelled
        if self.in_process and not info.done:
            # we hold its claim and the process that coordinated it is gone: its flow run
            # will never end by itself
            info = await self.jobs.mark_crashed(job_id, "the service coordinating this job stopped")
        cut_short = info.summary is None or info.summary.state == "cancelled"
        if info.done and cut_short and not user_cancelled:
            # by a crash or by the service stopping: finish it (stored outputs are skipped,
            # so nothing is paid for twice)
            logger.info("resuming job %s on Prefect (it was %s)", job_id, info.state)
            await self.jobs.resume(job_id)

    async def _watch(self, live: LiveJob, on_end: OnEnd) -> None:
        job_id = live.job_id
        info: JobInfo | None = None
        resumes = 0
        try:
            while True:
                info = await self.jobs.wait(job_id, interval=_POLL_SECONDS)
                if info.state == "crashed" and not live.cancel_requested and resumes < _MAX_RESUMES:
                    resumes += 1
                    logger.warning("job %s crashed; resuming it", job_id)
                    await self.jobs.resume(job_id)
                    continue
                break
        except asyncio.CancelledError:
            raise  # the service is stopping: the job resumes at the next start
        except Exception as exc:
            logger.error("lost track of job %s", job_id, exc_info=exc)
            live.end(None, exc)
        else:
            _end_from(live, info)
        finally:
            self._watchers.discard(job_id)
        try:
            await on_end(live)
        except Exception:
            logger.exception("could not record the end of job %s", job_id)
        finally:
            live.recorded.set()

    def live(self, job_id: str) -> LiveJob | None:
        """The view of a job this process follows."""
        return self._watchers.live(job_id)

    def running(self) -> list[str]:
        """Jobs this process follows."""
        return self._watchers.ids()

    async def cancel(self, job_id: str) -> bool:
        """Ask the job to stop, wherever its shards run: none starts any more, running ones
        stop after the images in hand (nothing paid for is lost)."""
        from ..errors import ObjectNotFoundError

        live = self.live(job_id)
        if live is not None:
            live.request_cancel()
        try:
            await self.jobs.cancel(job_id)
        except ObjectNotFoundError:
            return False
        return True

    async def records(self, job_id: str) -> list[dict[str, Any]]:
        """The per-input records of the job's shard manifests, by input index, with the
        service's own view of each source."""
        from ..prefect import JobStore

        store = JobStore(self.context.sink, job_id)
        record = await store.read(store.job_key)
        if record is None:
            return []
        params = await store.read(store.parameters_key) or {}
        shard_size = int(params.get("shard_size") or self.jobs.defaults["shard_size"])
        sources = self._sources.get(job_id)
        if sources is None:
            sources = await self.store.load_sources(job_id)
            self._sources[job_id] = sources
        records: list[dict[str, Any]] = []
        # every service source is one input, so shard n holds inputs n*size... (the job
        # record's count of dispatched shards is only written every few seconds)
        for shard in range(-(-len(sources) // shard_size)):
            for line in await store.read_manifest(shard):
                if "index" not in line:
                    continue
                index = shard * shard_size + int(line["index"])
                if 0 <= index < len(sources):
                    records.append({**line, "index": index, "source": _label(sources[index])})
        return records

    async def check(self) -> str | None:
        """``None`` when the Prefect API answers (and the deployment exists, if one is
        set), else what is wrong."""
        from prefect.client.orchestration import get_client

        try:
            async with get_client() as client:
                problem = await client.api_healthcheck()
                if problem is not None:
                    return f"the Prefect API does not answer: {type(problem).__name__}"
                if self.jobs.deployment is not None:
                    await client.read_deployment_by_name(self.jobs.deployment)
        except Exception as exc:
            return f"Prefect: {type(exc).__name__}: {exc}"[:300]
        return None

    async def aclose(self) -> None:
        """Stop following jobs and stop the flow runs coordinated here (their shards finish
        the images in hand); the next start resumes them."""
        await self._watchers.cancel_all()
        self._closing.set()
        if self._holder is not None:
            # the flow runs coordinated here stop after their shards' images in hand; one
            # that takes longer is cancelled (it is resumed at the next start all the same)
            done, _ = await asyncio.wait({self._holder}, timeout=_CLOSE_SECONDS)
            if not done:
                self._holder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._holder
            self._holder = None


def _end_from(live: LiveJob, info: JobInfo | None) -> None:
    """Record on ``live`` how the job ended, as a local job's end would be."""
    if info is None:
        live.end(None, None)
        return
    if info.state == "cancelled":
        live.cancel_requested = True
    error: BaseException | None = None
    if info.summary is not None:
        # where the sink and the inputs are on the servers is not the client's business: the
        # items say, per input and in the client's own terms, what failed
        live.summary = {
            k: v for k, v in info.summary.to_dict().items() if k not in _SERVER_SIDE_FIELDS
        }
    elif info.state in ("failed", "crashed"):
        error = JobEndedWithoutSummary(
            f"the job's Prefect flow run ended {info.flow_run_state or info.state} before "
            "recording a summary; see the flow run's logs"
        )
    live.end(None, error)
