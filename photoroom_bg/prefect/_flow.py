"""The ``remove_backgrounds`` flow and the ``remove_shard`` task.

The flow lists the sources lazily and cuts them into shards, each a ``remove_shard`` task run
(``_coordinator.py`` dispatches and watches them); at the end the totals become the flow's
result, its final state and two artifacts.
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.states import Cancelled, Failed

from ._coordinator import Coordinator
from ._options import options_to_dict
from ._parameters import JobParameters
from ._shard import run_shard, should_retry
from ._summary import JobFailed

__all__ = ["remove_backgrounds", "remove_shard"]


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
    max_retries: int = 5,
    retry_backoff: float = 0.5,
    retry_possibly_billed: bool = True,
    max_source_bytes: int | None = None,
    call_timeout: float | None = None,
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
        max_retries, retry_backoff: retries of a failed call (a 429, a 5xx, a dropped
            connection), and their base delay in seconds.
        retry_possibly_billed: retry failures Photoroom may have billed too (a 5xx other
            than 503, a connection dropped or a timeout after the upload, a spoiled answer),
            as :class:`~photoroom_bg.RetryPolicy` does by default; ``False`` fails them,
            marked ``possibly_billed``.
        max_source_bytes: the largest input read (``None``: the reader's 50 MB).
        call_timeout: seconds one Photoroom call may take (``None``: the worker's
            ``$PHOTOROOM_TIMEOUT``, else 120 s).
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
        max_retries=max_retries,
        retry_backoff=retry_backoff,
        retry_possibly_billed=retry_possibly_billed,
        max_source_bytes=max_source_bytes,
        call_timeout=call_timeout,
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
    max_retries: int = 5,
    retry_backoff: float = 0.5,
    retry_possibly_billed: bool = True,
    max_source_bytes: int | None = None,
    call_timeout: float | None = None,
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
        max_running_shards: shards handed out and not finished, running or waiting for a
            worker (listing waits for room); about twice the workers' total ``--limit``
            keeps every worker busy.
        job_id: the job's id (default: this flow run's id); reuse it to resume a job.
        heartbeat_timeout: seconds without a beat after which a running shard's worker is
            taken for dead and the shard is given to another.
        max_failures: failed inputs listed in the result and the artifact.
        max_retries, retry_backoff: each shard's retries of a failed call (a 429, a 5xx, a
            dropped connection), and their base delay in seconds.
        retry_possibly_billed: retry failures Photoroom may have billed too (a 5xx other
            than 503, a connection dropped or a timeout after the upload, a spoiled answer),
            as :class:`~photoroom_bg.RetryPolicy` does by default; ``False`` fails them,
            marked ``possibly_billed``, so that no image is paid for twice.
        max_source_bytes: the largest input a shard reads (``None``: 50 MB, Photoroom's cap);
            a larger one fails alone, unpaid.
        call_timeout: seconds one Photoroom call may take in any shard (``None``: each worker's
            ``$PHOTOROOM_TIMEOUT``, else 120 s); raise it for large images and AI features.
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
        max_retries=max_retries,
        retry_backoff=retry_backoff,
        retry_possibly_billed=retry_possibly_billed,
        max_source_bytes=max_source_bytes,
        call_timeout=call_timeout,
    )
    attempt = f"{flow_run.id}:{flow_run.run_count}"
    summary = await Coordinator(params, attempt, str(flow_run.id), remove_shard).run()
    if summary.state == "completed":
        return summary.to_dict()
    error = JobFailed(summary)
    ended: State[Any] = (
        Cancelled(message=summary.message, data=error)
        if summary.state == "cancelled"
        else Failed(message=summary.message, data=error)
    )
    return ended  # type: ignore[return-value]
