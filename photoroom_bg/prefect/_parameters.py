"""JobParameters: a job's parameters, validated before anything is listed or billed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs

from .._numbers import check_count, check_flag, check_given, check_number
from .._redact import lone_surrogate, printable
from ..errors import ConfigurationError
from ..sinks._open import sink_uri
from ..sources import _local_under, _working_folder
from ._environment import check_shared_sink
from ._jobstore import check_job_id
from ._options import options_to_dict

__all__ = ["DEFAULT_RATE_LIMIT", "JobParameters"]

#: The global concurrency limit a flow creates when given ``requests_per_minute``.
DEFAULT_RATE_LIMIT = "photoroom-bg"


def _references(value: str | Sequence[str]) -> Any:
    """One reference given as a str, as the flow takes it, is a list of one: not a list of
    its characters (a str is a ``Sequence[str]`` too). Anything else is checked later."""
    if isinstance(value, str):
        return [value]
    return list(value) if isinstance(value, (list, tuple)) else value


def _check_text(name: str, value: str) -> None:
    """Refuse a string JSON cannot carry as text: a job's parameters travel as JSON, to the
    Prefect server and into the job's own records."""
    at = lone_surrogate(value)
    if at is not None:
        raise ConfigurationError(
            f"{name} {printable(value)!r} is not text: it holds a lone surrogate at position "
            f"{at} (a file name that is not UTF-8, read with os.fsdecode?), which a job's "
            "parameters cannot carry; rename the file, or give its folder"
        )


@attrs.frozen(kw_only=True)
class JobParameters:
    """The validated parameters of a job (what ``remove_backgrounds`` takes).

    Checked when built: a bad value fails before anything is listed or billed.
    """

    sources: list[str] = attrs.field(converter=_references)
    sink: str = attrs.field(converter=sink_uri)
    options: dict[str, Any] = attrs.field(factory=dict)
    shard_size: int = 100
    concurrency: int = 8
    engine: str = "photoroom"
    api_key_secret: str | None = None
    requests_per_minute: float | None = None
    rate_limit: str | None = None
    deferred: bool = False
    max_running_shards: int = 8
    job_id: str | None = None
    heartbeat_timeout: float = 60.0
    max_failures: int = 50
    max_retries: int = 5
    retry_backoff: float = 0.5
    retry_possibly_billed: bool = True
    max_source_bytes: int | None = None
    call_timeout: float | None = None

    def __attrs_post_init__(self) -> None:
        check_shared_sink(self.sink)
        if not self.sources or not all(isinstance(s, str) and s for s in self.sources):
            raise ConfigurationError("sources must be a non-empty list of references (strings)")
        _check_text("sink", self.sink)
        for index, source in enumerate(self.sources):
            _check_text(f"sources[{index}]", source)
        for name, least in (
            ("shard_size", 1), ("concurrency", 1), ("max_running_shards", 1), ("max_failures", 0),
            ("max_retries", 0),
        ):  # fmt: skip
            check_count(name, getattr(self, name), least)
        # NaN, a negative or an endless delay: every retry fails at once, or never comes
        check_number("retry_backoff", self.retry_backoff, finite=True)
        if self.retry_backoff < 0:
            raise ConfigurationError("retry_backoff must be 0 or more seconds")
        if self.max_source_bytes is not None:
            check_count("max_source_bytes", self.max_source_bytes, 1)
        # a job's parameters are JSON: no inf there ("no limit" is a worker's own setting)
        if self.call_timeout is not None:
            check_number("call_timeout", self.call_timeout, finite=True)
            if not self.call_timeout > 0:
                raise ConfigurationError(
                    "call_timeout must be positive, finite seconds, or None for each worker's "
                    "PHOTOROOM_TIMEOUT (default 120 s)"
                )
        check_flag("deferred", self.deferred)
        check_flag("retry_possibly_billed", self.retry_possibly_billed)
        # NaN too; inf: a lost worker's shard would never be run again (and it is no JSON)
        if not 0 < self.heartbeat_timeout < math.inf:
            raise ConfigurationError("heartbeat_timeout must be positive, finite seconds")
        if self.requests_per_minute is not None and not 0 < self.requests_per_minute < math.inf:
            raise ConfigurationError("requests_per_minute must be positive and finite (or None)")
        if self.engine != "photoroom" and not (
            self.engine == "local" or (self.engine.startswith("local:") and self.engine[6:].strip())
        ):
            raise ConfigurationError(
                f"unknown engine {self.engine!r}: use 'photoroom', 'local' or 'local:<model>'"
            )
        # "" (an unset variable, most often) must not mean "no secret" or "no fleet limit":
        # the first bills whatever key each worker has, the second lets the fleet past the
        # account's rate
        for name in ("api_key_secret", "rate_limit"):
            value = getattr(self, name)
            if value is not None:
                check_given(name, value)
        if self.job_id is not None:
            check_job_id(self.job_id)
        options_to_dict(self.options)  # validates
        # relative paths are the caller's: a flow run or a task worker working in another
        # folder would list, read and store somewhere else (or nowhere)
        here = _working_folder()
        object.__setattr__(self, "sources", [_local_under(here, s) for s in self.sources])
        object.__setattr__(self, "sink", _local_under(here, self.sink))

    @property
    def limit_name(self) -> str | None:
        """The fleet rate limit shards take slots of (``None``: none)."""
        if self.rate_limit:
            return self.rate_limit
        return DEFAULT_RATE_LIMIT if self.requests_per_minute else None

    def flow_parameters(self) -> dict[str, Any]:
        """The parameters of a ``remove_backgrounds`` flow run."""
        return {
            "sources": list(self.sources),
            "sink": self.sink,
            "options": dict(self.options),
            "shard_size": self.shard_size,
            "concurrency": self.concurrency,
            "engine": self.engine,
            "api_key_secret": self.api_key_secret,
            "requests_per_minute": self.requests_per_minute,
            "rate_limit": self.rate_limit,
            "deferred": self.deferred,
            "max_running_shards": self.max_running_shards,
            "job_id": self.job_id,
            "heartbeat_timeout": self.heartbeat_timeout,
            "max_failures": self.max_failures,
            "max_retries": self.max_retries,
            "retry_backoff": self.retry_backoff,
            "retry_possibly_billed": self.retry_possibly_billed,
            "max_source_bytes": self.max_source_bytes,
            "call_timeout": self.call_timeout,
        }
