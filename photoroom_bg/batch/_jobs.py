"""What a batch reports: per-job results, live progress and the final report."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from ..errors import PhotoroomBGError
from ..sinks._base import StoredObject

__all__ = ["BatchReport", "JobResult", "JobStatus", "Progress"]


class JobStatus(str, enum.Enum):
    """Where a job stands.

    ``succeeded``: made and stored by this batch. ``skipped``: already stored (an earlier
    run, or a duplicate input of this one), nothing spent. ``spilled``: made and paid for,
    but the sink could not take it: kept in the local spill folder, and stored by the next
    run (``resume()``, ``retry_failed()`` or the same batch again) without calling the
    engine. ``failed``: a typed error; ``cancelled``: not processed (the batch stopped).
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    SPILLED = "spilled"
    FAILED = "failed"
    CANCELLED = "cancelled"


@attrs.frozen(repr=False)
class JobResult:
    """The outcome of one input.

    Attributes:
        index: the input's position in the batch (0-based).
        source: where the input came from, without query string or credentials.
        name: the input's stem, used in its output key.
        status: :class:`JobStatus`.
        key: the output key in the sink (``None`` when the input could not be read).
        output: the stored cut-out (``succeeded``, ``skipped``), or the spilled copy in
            the local spill folder (``spilled``).
        error: the typed error of a ``failed`` job (and of a ``spilled`` one: why the sink
            did not take it).
        reason: why a job was ``cancelled``, ``skipped`` or ``spilled``.
        attempts: engine calls made (retries included).
        billed: True when an engine call of this job succeeded and spent credits.
        possibly_billed: engine calls of this job that failed in a way the server may
            still have billed (a read timeout, a dropped connection or a truncated answer
            after the request went out, a 5xx other than 503).
        duration: seconds from start to finish.
        input_size: bytes read; ``output_size``: bytes stored.
    """

    index: int
    source: str
    name: str
    status: JobStatus
    key: str | None = None
    output: StoredObject | None = None
    error: PhotoroomBGError | None = None
    reason: str | None = None
    attempts: int = 0
    billed: bool = False
    possibly_billed: int = 0
    duration: float = 0.0
    input_size: int = 0
    output_size: int = 0

    @property
    def ok(self) -> bool:
        """True for ``succeeded`` and ``skipped`` jobs: the output is in the sink."""
        return self.status in (JobStatus.SUCCEEDED, JobStatus.SKIPPED)

    @property
    def charges(self) -> tuple[int, int]:
        """Calls of this job the account may have paid for, as ``(at least, at most)``."""
        low = int(self.billed)
        return low, low + self.possibly_billed

    @property
    def error_type(self) -> str | None:
        """The error's class name, e.g. ``"OutOfCreditsError"``."""
        return type(self.error).__name__ if self.error is not None else None

    def __repr__(self) -> str:
        detail = self.key if self.ok else (self.error_type or self.reason)
        return f"JobResult(#{self.index} {self.source!r} {self.status.value}: {detail})"


@attrs.frozen
class Progress:
    """A snapshot of a running batch.

    Attributes:
        total: inputs found so far, or ``None`` while sources are still being listed.
        pending, running: jobs waiting, and being processed.
        succeeded: cut-outs made and stored by this batch.
        skipped: outputs already stored (a re-run, a duplicate): nothing was spent.
        spilled: cut-outs made but kept in the local spill folder (the sink refused them).
        failed, cancelled: jobs that ended without an output.
        elapsed: seconds since the batch started.
        rate: jobs processed per second (cancelled jobs are not counted).
        eta: estimated seconds left (``None`` while ``total`` is unknown or nothing has
            been processed yet; ``0`` once the batch has stopped).
    """

    total: int | None
    pending: int
    running: int
    succeeded: int
    skipped: int
    failed: int
    cancelled: int
    elapsed: float
    rate: float
    eta: float | None
    spilled: int = 0

    @property
    def done(self) -> int:
        """Jobs finished in any way."""
        return self.succeeded + self.skipped + self.spilled + self.failed + self.cancelled

    @property
    def stored(self) -> int:
        """Inputs whose output is in the sink: made now (``succeeded``) or before
        (``skipped``)."""
        return self.succeeded + self.skipped

    @property
    def processed(self) -> int:
        """Jobs finished other than ``cancelled`` ones: what the batch really went through."""
        return self.done - self.cancelled


@attrs.frozen
class BatchReport:
    """The outcome of a whole batch.

    Attributes:
        total_count: inputs seen.
        stored_count: inputs whose output is in the sink at the end: ``succeeded_count``
            (made by this batch) + ``skipped_count`` (stored before; nothing spent).
        succeeded_count, skipped_count, failed_count, cancelled_count: per status.
        spilled_count: cut-outs made and paid for that the sink did not take; they wait in
            the spill folder for the next run, which stores them without the engine.
        failures: failed jobs grouped by error type name (the latest ``keep_results`` of
            each type).
        failure_counts: how many jobs failed with each error type (exact).
        billed_calls: engine calls that certainly spent credits (they succeeded).
        possibly_billed_calls: failed engine calls the server may still have billed (see
            :attr:`JobResult.possibly_billed`); the account was charged at least
            ``billed_calls`` and at most ``billed_calls + possibly_billed_calls`` times.
        possibly_billed_twice: jobs whose output was made after such a call, so the
            account may have paid for that image twice.
        credits_spent: images spent according to the account's balance, read before and
            after the batch when it was made with ``track_credits=True`` and the engine
            can tell (``None`` otherwise).
        stop_reason: why the batch stopped early (out of credits, bad key, cancelled,
            the API or the sink unreachable).
        listing_error: why listing the sources ended early, if it did (the inputs listed
            before it were processed).
        duration: seconds.
    """

    total_count: int
    stored_count: int
    succeeded_count: int
    skipped_count: int
    failed_count: int
    cancelled_count: int
    failures: Mapping[str, tuple[JobResult, ...]]
    failure_counts: Mapping[str, int]
    billed_calls: int
    credits_spent: float | None
    stop_reason: str | None
    duration: float
    spilled_count: int = 0
    possibly_billed_calls: int = 0
    possibly_billed_twice: int = 0
    listing_error: str | None = None

    @property
    def all_ok(self) -> bool:
        """True when every input has its output in the sink."""
        return self.stored_count == self.total_count and self.listing_error is None
