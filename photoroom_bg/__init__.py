"""photoroom_bg: remove image backgrounds at scale with the Photoroom API.

The façade: import everything from here, never from a private module.
"""

from __future__ import annotations

from . import errors
from ._base_client import NOT_GIVEN, PhotoroomWarning
from ._client import AsyncPhotoroomClient, PhotoroomClient
from ._retry import RetryPolicy
from .engines import Engine, LocalEngine, PhotoroomEngine
from .models import Account, ImageResult
from .options import EditOptions, SegmentOptions
from .sinks._base import Sink, StoredObject

__version__ = "0.1.0"

__all__ = [
    "NOT_GIVEN",
    "Account",
    "AsyncPhotoroomClient",
    "EditOptions",
    "Engine",
    "ImageResult",
    "LocalEngine",
    "PhotoroomClient",
    "PhotoroomEngine",
    "PhotoroomWarning",
    "RetryPolicy",
    "SegmentOptions",
    "Sink",
    "StoredObject",
    "__version__",
    "errors",
]
