"""open_sink(): a sink from a string, and SyncSink: the blocking façade."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from .. import _loop
from .._redact import redact_url
from ..errors import ConfigurationError
from ._base import Sink, StoredObject
from ._filesystem import FileSystemSink
from ._memory import MemorySink

__all__ = ["SyncSink", "open_sink", "sink_uri"]


def sink_uri(text: str) -> str:
    """``text`` with the scheme of a URI in lower case (``S3://bucket`` is ``s3://bucket``:
    a URI's scheme is case-insensitive, RFC 3986 section 3.1); a path as it is. A setting of
    another type is returned as it is, for its own check to refuse."""
    given: object = text
    if not isinstance(given, str):
        return cast(str, given)
    scheme, sep, rest = given.partition("://")
    if sep and _SCHEME.fullmatch(scheme):
        return f"{scheme.lower()}://{rest}"
    return given


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")  # RFC 3986 section 3.1


def open_sink(target: str | os.PathLike[str] | Sink, **options: Any) -> Sink:
    """Build a sink from a string.

    ``"memory://"`` -> :class:`MemorySink`; ``"s3://bucket/prefix"`` -> :class:`S3Sink`
    (``options`` go to its constructor: ``endpoint_url``, ``region``, credentials,
    ``create_bucket``...); ``"file:///abs/path"`` or a plain path -> :class:`FileSystemSink`.
    A sink passes through unchanged.
    """
    if not isinstance(target, (str, os.PathLike)):
        if isinstance(target, Sink):
            return target
        raise ConfigurationError(f"cannot open a sink from {type(target).__name__}")
    text = sink_uri(os.fspath(target))
    if text.startswith("memory://"):
        return MemorySink(**options)
    if text.startswith("s3://"):
        from ._s3 import S3Sink

        return S3Sink(text, **options)
    if text.startswith("file://"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ConfigurationError(f"{redact_url(text)!r}: file:// URIs must name a local path")
        return FileSystemSink(unquote(parts.path), **options)
    if "://" in text:
        raise ConfigurationError(
            f"unsupported sink {redact_url(text)!r}: use a folder, file://, s3:// or memory://"
        )
    return FileSystemSink(text, **options)


class SyncSink:
    """Blocking access to any sink, for scripts and notebooks.

    Calls run on photoroom_bg's background event loop, so they work even where an event loop
    is already running (Jupyter). ``SyncSink(open_sink("s3://bucket/out")).get("a.png")``.
    """

    def __init__(self, sink: Sink | str) -> None:
        self.sink = open_sink(sink)

    def __repr__(self) -> str:
        return f"SyncSink({self.sink!r})"

    def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """See :meth:`Sink.put`."""
        return _loop.run_sync(
            self.sink.put(key, data, content_type=content_type, metadata=metadata)
        )

    def exists(self, key: str) -> bool:
        """See :meth:`Sink.exists`."""
        return _loop.run_sync(self.sink.exists(key))

    def get(self, key: str) -> bytes:
        """See :meth:`Sink.get`."""
        return _loop.run_sync(self.sink.get(key))

    def url(self, key: str, *, expires: float | timedelta = 3600) -> str:
        """See :meth:`Sink.url`."""
        return _loop.run_sync(self.sink.url(key, expires=expires))

    def delete(self, key: str) -> None:
        """See :meth:`Sink.delete`."""
        _loop.run_sync(self.sink.delete(key))

    def close(self) -> None:
        """Close the underlying sink."""
        _loop.run_sync(self.sink.aclose(), cancel=False)

    def __enter__(self) -> SyncSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
