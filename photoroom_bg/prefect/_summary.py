"""What a shard and a whole run report: small, JSON-ready summaries built in one place.

A shard's summary is made from its :class:`~photoroom_bg.BatchReport` by
:func:`shard_summary`, which copies *every* integer field of the report into ``counts``: a count
added to the report later (possibly-billed jobs, outputs kept locally...) reaches the shard
summary, the run's totals and the artifact without a change here. Summaries never hold image
bytes, keys or secrets: counts, error type names, bounded messages and sink keys.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import Any, Literal, cast

import attrs

from ..errors import PhotoroomBGError

__all__ = [
    "FailureNote",
    "JobFailed",
    "RunSummary",
    "RunTotals",
    "ShardOutcome",
    "ShardSummary",
    "report_counts",
    "shard_summary",
    "unstarted_summary",
]

#: How a shard ended: ran to its end, stopped the fleet (402, 401/403, storage gone), was
#: cancelled (a stop elsewhere, or by a user), or was replaced by a newer copy of itself.
ShardOutcome = Literal["completed", "stopped", "cancelled", "superseded"]
RunState = Literal["completed", "failed", "cancelled"]
_MESSAGE_CAP = 300


def _report_fields(report: object) -> dict[str, Any]:
    if attrs.has(type(report)):
        return {f.name: getattr(report, f.name) for f in attrs.fields(cast(Any, type(report)))}
    if dataclasses.is_dataclass(report) and not isinstance(report, type):
        return {f.name: getattr(report, f.name) for f in dataclasses.fields(report)}
    raise TypeError(f"not a report: {type(report).__name__}")


def report_counts(report: object) -> dict[str, int]:
    """Every integer field of a :class:`~photoroom_bg.BatchReport` (``total_count``,
    ``stored_count``, ..., ``billed_calls``), whatever fields the report has."""
    return {
        name: value
        for name, value in _report_fields(report).items()
        if isinstance(value, int) and not isinstance(value, bool)
    }


@attrs.frozen
class FailureNote:
    """One failed input, as a summary keeps it.

    Attributes:
        source: where the input came from (no query string or credentials).
        error_type: the error's class name, e.g. ``"InvalidImageError"``.
        message: the error's message, cut to 300 characters.
    """

    source: str
    error_type: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready fields."""
        return {"source": self.source, "error_type": self.error_type, "message": self.message}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FailureNote:
        """The inverse of :meth:`to_dict`."""
        return cls(str(data["source"]), str(data["error_type"]), str(data["message"]))


def _note(job: Any) -> FailureNote:
    error = getattr(job, "error", None)
    message = str(getattr(error, "message", error) or getattr(job, "reason", "") or "")
    return FailureNote(str(job.source), str(job.error_type or "Error"), message[:_MESSAGE_CAP])


@attrs.frozen
class ShardSummary:
    """What one ``remove_shard`` task run did (its return value, and its record in the sink).

    Attributes:
        job_id: the job the shard belongs to.
        shard: the shard's number in the job (0-based).
        size: sources in the shard.
        outcome: ``completed``, ``stopped`` (this shard met a 402, 401/403 or lost storage and
            stopped the fleet), ``cancelled`` or ``superseded`` (a newer copy took over).
        counts: every integer count of the shard's :class:`~photoroom_bg.BatchReport`
            (``total_count``, ``stored_count``, ``succeeded_count``, ``skipped_count``,
            ``failed_count``, ``cancelled_count``, ``billed_calls``...).
        failure_counts: failed inputs per error type (exact).
        failures: some failed inputs (at most the task's ``max_failures``).
        stop_reason: why the shard stopped early, if it did.
        duration: seconds.
        manifest_key: the shard's manifest in the sink (one JSON line per input).
    """

    job_id: str
    shard: int
    size: int
    outcome: ShardOutcome
    counts: Mapping[str, int]
    failure_counts: Mapping[str, int] = attrs.field(factory=dict)
    failures: tuple[FailureNote, ...] = ()
    stop_reason: str | None = None
    duration: float = 0.0
    manifest_key: str | None = None

    def count(self, name: str) -> int:
        """``counts[name]``, 0 when absent."""
        return int(self.counts.get(name, 0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (what the task returns and the sink keeps)."""
        return {
            "job_id": self.job_id,
            "shard": self.shard,
            "size": self.size,
            "outcome": self.outcome,
            "counts": dict(self.counts),
            "failure_counts": dict(self.failure_counts),
            "failures": [note.to_dict() for note in self.failures],
            "stop_reason": self.stop_reason,
            "duration": round(self.duration, 3),
            "manifest_key": self.manifest_key,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardSummary:
        """The inverse of :meth:`to_dict`."""
        return cls(
            job_id=str(data["job_id"]),
            shard=int(data["shard"]),
            size=int(data["size"]),
            outcome=data["outcome"],
            counts={str(k): int(v) for k, v in dict(data.get("counts") or {}).items()},
            failure_counts={
                str(k): int(v) for k, v in dict(data.get("failure_counts") or {}).items()
            },
            failures=tuple(FailureNote.from_dict(n) for n in data.get("failures") or ()),
            stop_reason=data.get("stop_reason"),
            duration=float(data.get("duration") or 0.0),
            manifest_key=data.get("manifest_key"),
        )


def shard_summary(
    report: object,
    *,
    job_id: str,
    shard: int,
    size: int,
    outcome: ShardOutcome,
    manifest_key: str | None,
    max_failures: int = 20,
) -> ShardSummary:
    """Summarise one shard's :class:`~photoroom_bg.BatchReport`: the one place summaries are
    built, so a field added to the report flows into them by itself."""
    fields = _report_fields(report)
    failures: Mapping[str, Iterable[Any]] = fields.get("failures") or {}
    notes = [_note(job) for jobs in failures.values() for job in jobs][: max(0, max_failures)]
    return ShardSummary(
        job_id=job_id,
        shard=shard,
        size=size,
        outcome=outcome,
        counts=report_counts(report),
        failure_counts=dict(fields.get("failure_counts") or {}),
        failures=tuple(notes),
        stop_reason=fields.get("stop_reason"),
        duration=float(fields.get("duration") or 0.0),
        manifest_key=manifest_key,
    )


def unstarted_summary(
    *, job_id: str, shard: int, size: int, outcome: ShardOutcome, reason: str | None
) -> ShardSummary:
    """A shard that ended before processing anything (the job was stopped, or a newer copy
    of the shard took over): every source counts as cancelled, nothing was billed."""
    return ShardSummary(
        job_id=job_id,
        shard=shard,
        size=size,
        outcome=outcome,
        counts={"total_count": size, "cancelled_count": size},
        stop_reason=reason,
    )


@attrs.frozen
class RunSummary:
    """The result of a ``remove_backgrounds`` flow run (and of a job's status once done).

    Attributes:
        job_id: the job (its shard manifests are under ``manifests``).
        state: ``completed`` (every input stored), ``failed`` or ``cancelled``.
        sink: where the outputs are.
        manifests: the sink prefix holding the job's shard manifests and records.
        shards: shards the sources were cut into.
        shard_outcomes: shards per outcome (``completed``, ``stopped``, ``cancelled``,
            ``failed``, ``lost``...).
        counts: the shards' counts, summed (``total_count``, ``stored_count``,
            ``failed_count``, ``billed_calls``...).
        failure_counts: failed inputs per error type.
        failures: some failed inputs.
        stop_reason: why the job stopped early (402, 401/403, cancelled...), if it did.
        credits_spent: the account's balance change over the run, when the flow could read
            it (it includes any other use of the account meanwhile).
        duration: seconds.
    """

    job_id: str
    state: RunState
    sink: str
    manifests: str
    shards: int
    shard_outcomes: Mapping[str, int]
    counts: Mapping[str, int]
    failure_counts: Mapping[str, int]
    failures: tuple[FailureNote, ...]
    stop_reason: str | None
    credits_spent: float | None
    duration: float

    def count(self, name: str) -> int:
        """``counts[name]``, 0 when absent."""
        return int(self.counts.get(name, 0))

    @property
    def message(self) -> str:
        """One line for a state message: stored/total, failures by type, the stop reason."""
        text = f"{self.count('stored_count'):,} of {self.count('total_count'):,} images stored"
        if self.failure_counts:
            kinds = ", ".join(f"{k}: {v:,}" for k, v in sorted(self.failure_counts.items()))
            text += f"; {self.count('failed_count'):,} failed ({kinds})"
        if self.count("spilled_count"):  # paid for: a re-run stores them without a call
            text += (
                f"; {self.count('spilled_count'):,} paid for and kept in a spill folder "
                "(run the job again to store them)"
            )
        if self.count("cancelled_count"):
            text += f"; {self.count('cancelled_count'):,} not processed"
        if self.stop_reason:
            text += f"; stopped: {self.stop_reason}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the flow's result)."""
        return {
            "job_id": self.job_id,
            "state": self.state,
            "sink": self.sink,
            "manifests": self.manifests,
            "shards": self.shards,
            "shard_outcomes": dict(self.shard_outcomes),
            "counts": dict(self.counts),
            "failure_counts": dict(self.failure_counts),
            "failures": [note.to_dict() for note in self.failures],
            "stop_reason": self.stop_reason,
            "credits_spent": self.credits_spent,
            "duration": round(self.duration, 3),
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        """The inverse of :meth:`to_dict`."""
        spent = data.get("credits_spent")
        return cls(
            job_id=str(data["job_id"]),
            state=data["state"],
            sink=str(data["sink"]),
            manifests=str(data["manifests"]),
            shards=int(data["shards"]),
            shard_outcomes={str(k): int(v) for k, v in dict(data["shard_outcomes"]).items()},
            counts={str(k): int(v) for k, v in dict(data["counts"]).items()},
            failure_counts={str(k): int(v) for k, v in dict(data["failure_counts"]).items()},
            failures=tuple(FailureNote.from_dict(n) for n in data.get("failures") or ()),
            stop_reason=data.get("stop_reason"),
            credits_spent=float(spent) if spent is not None else None,
            duration=float(data.get("duration") or 0.0),
        )


class RunTotals:
    """Adds shard summaries up as they arrive, in bounded memory (counts are exact; at most
    ``max_failures`` failure notes are kept)."""

    def __init__(self, *, max_failures: int = 50) -> None:
        self.counts: Counter[str] = Counter()
        self.failure_counts: Counter[str] = Counter()
        self.failures: deque[FailureNote] = deque(maxlen=max(0, max_failures))
        self.shard_outcomes: Counter[str] = Counter()
        self.stop_reason: str | None = None
        self.shards = 0

    def add(self, summary: ShardSummary) -> None:
        """Count one finished shard."""
        self.shards += 1
        self.shard_outcomes[summary.outcome] += 1
        self.counts.update(summary.counts)
        self.failure_counts.update(summary.failure_counts)
        self.failures.extend(summary.failures)
        if summary.outcome == "stopped" and self.stop_reason is None and summary.stop_reason:
            self.stop_reason = f"shard {summary.shard}: {summary.stop_reason}"

    def add_unfinished(
        self, *, shard: int, size: int, outcome: str, error_type: str, message: str
    ) -> None:
        """Count a shard that ended without a summary (its task failed or its worker was
        lost for good): its sources count as failed with ``error_type``; a re-run of the job
        skips whatever it had stored."""
        self.shards += 1
        self.shard_outcomes[outcome] += 1
        self.counts.update({"total_count": size, "failed_count": size})
        self.failure_counts[error_type] += size
        self.failures.append(
            FailureNote(f"shard {shard} ({size} sources)", error_type, message[:_MESSAGE_CAP])
        )

    def add_cancelled(self, size: int) -> None:
        """Count sources never handed to a shard because the job stopped."""
        self.counts.update({"total_count": size, "cancelled_count": size})

    def stop(self, reason: str) -> None:
        """Record why the job stopped (the first reason wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def summary(
        self,
        *,
        job_id: str,
        sink: str,
        manifests: str,
        cancelled: bool,
        credits_spent: float | None,
        duration: float,
    ) -> RunSummary:
        """The :class:`RunSummary` of everything added so far."""
        counts = dict(self.counts)
        for name in ("total_count", "stored_count", "failed_count", "cancelled_count"):
            counts.setdefault(name, 0)
        complete = counts["stored_count"] == counts["total_count"] and self.stop_reason is None
        state: RunState = "cancelled" if cancelled else ("completed" if complete else "failed")
        return RunSummary(
            job_id=job_id,
            state=state,
            sink=sink,
            manifests=manifests,
            shards=self.shards,
            shard_outcomes=dict(self.shard_outcomes),
            counts=counts,
            failure_counts=dict(self.failure_counts),
            failures=tuple(self.failures),
            stop_reason=self.stop_reason,
            credits_spent=credits_spent,
            duration=duration,
        )


class JobFailed(PhotoroomBGError):
    """A job ended without storing every input: the data of its flow run's ``Failed`` (or
    ``Cancelled``) state, raised by a direct call of the flow.

    Attributes:
        summary: the run's :class:`RunSummary` (what was stored, what failed and why).
    """

    def __init__(self, summary: RunSummary) -> None:
        super().__init__(f"job {summary.job_id} {summary.state}: {summary.message}")
        self.summary = summary

    def __reduce__(self) -> tuple[Any, ...]:  # Prefect pickles a failed run's exception
        return (JobFailed, (self.summary,))
