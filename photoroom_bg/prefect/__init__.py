"""photoroom_bg on Prefect 3: a fleet of workers, one rate limit, no secret in a parameter,
never paying twice. Needs the ``prefect`` extra: ``pip install 'photoroom-bg[prefect]'``.

- :func:`remove_backgrounds`: the flow. It lists sources lazily, cuts them into shards and
  runs a :func:`remove_shard` task per shard, in its task runner or deferred to
  ``prefect task serve -m photoroom_bg.prefect`` workers.
- :class:`PrefectJobs`: start, watch, list results of and cancel jobs from a service.
- :class:`RateLimitedEngine` and :func:`ensure_rate_limit`: one requests-per-minute budget
  shared by every worker, through a Prefect global concurrency limit with slot decay.
- :func:`options_from_dict` / :func:`options_to_dict`: options as JSON-ready parameters.
"""

from __future__ import annotations

try:
    import prefect as _prefect  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "photoroom_bg.prefect needs Prefect 3: pip install 'photoroom-bg[prefect]'"
    ) from exc

from ._artifacts import artifact_key, render_markdown
from ._engine import RateLimitedEngine, ensure_rate_limit, prefect_rate_limit
from ._environment import open_worker_sink, worker_reader
from ._flow import remove_backgrounds, remove_shard
from ._jobs import JobInfo, PrefectJobs
from ._jobstore import JOBS_PREFIX, Control, JobStore, check_job_id
from ._options import options_from_dict, options_to_dict
from ._parameters import DEFAULT_RATE_LIMIT, JobParameters
from ._secrets import resolve_api_key
from ._shard import ShardStopped, run_shard, should_retry
from ._summary import FailureNote, JobFailed, RunSummary, ShardSummary, shard_summary

__all__ = [
    "DEFAULT_RATE_LIMIT",
    "JOBS_PREFIX",
    "Control",
    "FailureNote",
    "JobFailed",
    "JobInfo",
    "JobParameters",
    "JobStore",
    "PrefectJobs",
    "RateLimitedEngine",
    "RunSummary",
    "ShardStopped",
    "ShardSummary",
    "artifact_key",
    "check_job_id",
    "ensure_rate_limit",
    "open_worker_sink",
    "options_from_dict",
    "options_to_dict",
    "prefect_rate_limit",
    "remove_backgrounds",
    "remove_shard",
    "render_markdown",
    "resolve_api_key",
    "run_shard",
    "shard_summary",
    "should_retry",
    "worker_reader",
]
