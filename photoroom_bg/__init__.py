"""photoroom_bg: remove image backgrounds at scale with the Photoroom API.

The façade: import everything from here, never from a private module.
"""

from __future__ import annotations

from . import errors
from .engines._base import Engine
from .models import Account, ImageResult
from .options import SegmentOptions
from .sinks._base import Sink, StoredObject

__version__ = "0.1.0"

__all__ = [
    "Account",
    "Engine",
    "ImageResult",
    "SegmentOptions",
    "Sink",
    "StoredObject",
    "__version__",
    "errors",
]
