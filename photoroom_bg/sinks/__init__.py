"""Storage sinks: where cut-outs go.

One async :class:`Sink` protocol; :class:`MemorySink`, :class:`FileSystemSink` and
:class:`S3Sink` implement it; :func:`open_sink` builds one from a string and
:class:`SyncSink` gives blocking access. Output keys come from :class:`KeyTemplate`.
"""

from .._keys import DEFAULT_TEMPLATE, KeyTemplate, content_digest, options_digest, safe_stem
from ._base import Sink, StoredObject
from ._filesystem import FileSystemSink
from ._memory import MemorySink
from ._open import SyncSink, open_sink
from ._s3 import S3Sink, parse_s3_uri

__all__ = [
    "DEFAULT_TEMPLATE",
    "FileSystemSink",
    "KeyTemplate",
    "MemorySink",
    "S3Sink",
    "Sink",
    "StoredObject",
    "SyncSink",
    "content_digest",
    "open_sink",
    "options_digest",
    "parse_s3_uri",
    "safe_stem",
]
