"""photoroom_bg: remove image backgrounds at scale with the Photoroom API.

The façade: import everything from here, never from a private module.
"""

from __future__ import annotations

from . import errors
from ._base_client import NOT_GIVEN, PhotoroomWarning
from ._client import AsyncPhotoroomClient, PhotoroomClient
from ._retry import RetryPolicy
from .batch import BatchHandle, BatchRemover, BatchReport, JobResult, JobStatus, Progress
from .engines import Engine, LocalEngine, PhotoroomEngine
from .models import Account, Credits, ImageResult
from .options import (
    CustomImage,
    EditOptions,
    ImageLayer,
    LayerSegmentation,
    PromptImage,
    SegmentOptions,
    TextLayer,
)
from .sinks import (
    FileSystemSink,
    KeyTemplate,
    MemorySink,
    S3Sink,
    Sink,
    StoredObject,
    SyncSink,
    open_sink,
)

__version__ = "0.1.0"

__all__ = [
    "NOT_GIVEN",
    "Account",
    "AsyncPhotoroomClient",
    "BatchHandle",
    "BatchRemover",
    "BatchReport",
    "Credits",
    "CustomImage",
    "EditOptions",
    "Engine",
    "FileSystemSink",
    "ImageLayer",
    "ImageResult",
    "JobResult",
    "JobStatus",
    "KeyTemplate",
    "LayerSegmentation",
    "LocalEngine",
    "MemorySink",
    "PhotoroomClient",
    "PhotoroomEngine",
    "PhotoroomWarning",
    "Progress",
    "PromptImage",
    "RetryPolicy",
    "S3Sink",
    "SegmentOptions",
    "Sink",
    "StoredObject",
    "SyncSink",
    "TextLayer",
    "__version__",
    "errors",
    "open_sink",
]
