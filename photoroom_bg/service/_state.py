"""ServiceState: the objects one running service shares between requests, opened and closed
by the router's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import attrs

from .._client import AsyncPhotoroomClient
from .._logs import get_logger
from ..errors import ConfigurationError
from ..sinks import MemorySink, Sink, open_sink
from ..sources import SourceReader
from ._auth import RateLimiter, TokenAuth
from ._executor import STOP_GRACE_SECONDS, Executor, ExecutorContext, drain, make_executor
from ._jobs import JobService
from ._recent import RecentOutputs
from ._settings import ServiceSettings
from ._store import JobStore, LocalClaims

__all__ = ["ServiceState", "open_state"]

logger = get_logger("photoroom_bg.service")

T = TypeVar("T")


@attrs.define
class ServiceState:
    """What the endpoints use: settings, auth, the sink, one pooled Photoroom client, one
    SSRF-safe reader, the executor and the job service."""

    settings: ServiceSettings
    auth: TokenAuth
    limiter: RateLimiter
    sink: Sink
    client: AsyncPhotoroomClient | None
    reader: SourceReader
    executor: Executor
    jobs: JobService
    context: ExecutorContext
    #: cut-outs /api/v1 made without storing them, for a caller's retry (``None``: off)
    recent: RecentOutputs | None = None
    #: the small batches of /api/v1 requests under way
    requests: set[asyncio.Task[Any]] = attrs.field(factory=set)

    async def outliving_request(self, work: Awaitable[T]) -> T:
        """Run a request's small batch so that it outlives the request: a request
        cancelled (a stopping server cancels those still open after its grace) does not
        cancel calls already paid for, which go on to store their cut-outs; the service
        waits for them when it stops (:meth:`finish_requests`)."""
        task = asyncio.ensure_future(work)
        self.requests.add(task)
        task.add_done_callback(self.requests.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_ended_request)  # nobody awaits it any more
            raise

    async def finish_requests(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the requests' batches under way; then cancel
        what is left."""
        await drain(set(self.requests), grace, "request(s)")

    def unstored_sink(self) -> Sink:
        """Where a request that keeps nothing puts its cut-outs: the recent outputs (its
        session of them, which holds them until the request closes it), or a sink of its
        own when they are off."""
        return self.recent.session() if self.recent is not None else MemorySink()


def _open_sink(settings: ServiceSettings) -> Sink:
    options: dict[str, Any] = {}
    if settings.sink.startswith("s3://"):
        options = {"create_bucket": True, "url_expires": settings.url_expires}
        if settings.s3_endpoint_url:
            options["endpoint_url"] = settings.s3_endpoint_url
    return open_sink(settings.sink, **options)


def _ended_request(task: asyncio.Task[Any]) -> None:
    """Log the failure of a request's batch whose request was gone (nobody else sees it)."""
    if not task.cancelled() and task.exception() is not None:
        logger.warning("a request's batch failed after its request ended: %r", task.exception())


def _reader(settings: ServiceSettings) -> SourceReader:
    reader = SourceReader(
        max_bytes=settings.max_source_bytes,
        allow_networks=settings.allow_networks,
        timeout=30.0,
    )
    # a refusal's advice names the operator's setting, not the SDK's arguments
    reader.policy = attrs.evolve(reader.policy, front_end="service")
    return reader


@contextlib.asynccontextmanager
async def open_state(settings: ServiceSettings) -> AsyncIterator[ServiceState]:
    """Open everything the service needs; on exit stop the jobs (they resume at the next
    start) and close every client, on every exit path."""
    sink = _open_sink(settings)
    client = None
    if settings.api_key:
        client = AsyncPhotoroomClient(
            api_key=settings.api_key, base_url=settings.base_url, timeout=settings.timeout
        )
    reader = _reader(settings)
    heartbeat: asyncio.Task[None] | None = None
    executor: Executor | None = None
    state: ServiceState | None = None
    try:
        context = ExecutorContext(settings=settings, sink=sink, client=client, reader=reader)
        executor = make_executor(context)
        claims = LocalClaims(settings.state_dir)
        try:
            await asyncio.to_thread(claims.prepare)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot use PHOTOROOM_BG_STATE_DIR={os.fspath(settings.state_dir)}: {exc.strerror}"
            ) from None
        jobs = JobService(settings, JobStore(sink), claims, executor)
        state = ServiceState(
            settings=settings,
            auth=TokenAuth(settings.tokens),
            limiter=RateLimiter(settings.requests_per_minute_per_token),
            sink=sink,
            client=client,
            reader=reader,
            executor=executor,
            jobs=jobs,
            context=context,
            recent=RecentOutputs(settings.recent_outputs_bytes)
            if settings.recent_outputs_bytes
            else None,
        )
        try:
            await jobs.resume_orphans()
        except Exception:  # the service still answers; the readiness check tells
            logger.exception("could not resume unfinished jobs")
        heartbeat = asyncio.create_task(jobs.heartbeat())
        yield state
    finally:
        try:
            # jobs and requests end their calls under way side by side, each within the grace
            stops: list[Awaitable[None]] = []
            if executor is not None:  # its jobs' records stay fresh while their calls end
                stops.append(executor.aclose())
            if state is not None:
                stops.append(state.finish_requests(STOP_GRACE_SECONDS))
            for outcome in await asyncio.gather(*stops, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
        await reader.aclose()
        if client is not None:
            await client.aclose()
        await sink.aclose()
