"""Batch processing: :class:`BatchRemover` and the handles and reports it returns."""

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
from ._remover import BatchRemover

__all__ = [
    "BatchHandle",
    "BatchRemover",
    "BatchReport",
    "JobResult",
    "JobStatus",
    "Manifest",
    "Progress",
    "RateGate",
    "finished_keys_in",
    "load_finished_keys",
    "load_sources",
    "replayable_sources",
]
