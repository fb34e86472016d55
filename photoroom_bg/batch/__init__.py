"""Batch processing: :class:`BatchRemover` and the handles and reports it returns."""

from ._handle import BatchHandle, CompletedJobs
from ._jobs import BatchReport, JobResult, JobStatus, Progress
from ._manifest import load_sources
from ._remover import BatchRemover, default_spill_dir

__all__ = [
    "BatchHandle",
    "BatchRemover",
    "BatchReport",
    "CompletedJobs",
    "JobResult",
    "JobStatus",
    "Progress",
    "default_spill_dir",
    "load_sources",
]
