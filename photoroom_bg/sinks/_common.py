"""Small helpers shared by the sinks."""

from __future__ import annotations

import errno
import hashlib
from datetime import timedelta
from types import ModuleType

from .._numbers import check_number
from .._redact import lone_surrogate
from ..errors import UnsafeKeyError

__all__ = ["DISK_FULL", "check_key", "seconds", "sha256_checksum", "try_lock"]

#: the ``errno`` values of a write that found no room: the disk full, a quota, a size cap
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def check_key(key: str) -> str:
    """Refuse keys no sink should accept: empty, NUL, backslash, ``..``, absolute, or text
    with no UTF-8 form (a lone surrogate, such as an undecodable file-name byte)."""
    if not isinstance(key, str) or not key:
        raise UnsafeKeyError("a key must be a non-empty string")
    if "\x00" in key:
        raise UnsafeKeyError(f"key {key!r} contains a NUL byte")
    at = lone_surrogate(key)
    if at is not None:
        raise UnsafeKeyError(
            f"key {key!r} is not text (a lone surrogate, {key[at]!r}, at position {at}): keys "
            "are UTF-8, as S3 keys are"
        )
    if "\\" in key:
        raise UnsafeKeyError(f"key {key!r} contains a backslash; use '/' between folders")
    if key.startswith("/"):
        raise UnsafeKeyError(f"key {key!r} is absolute; keys are relative to the sink")
    parts = key.split("/")
    if ".." in parts or "." in parts:
        raise UnsafeKeyError(f"key {key!r} contains '.' or '..' segments")
    if "" in parts:
        raise UnsafeKeyError(f"key {key!r} contains an empty path segment")
    return key


def sha256_checksum(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def seconds(expires: float | timedelta, name: str = "expires") -> int:
    """An expiry in whole seconds (at least 1): a positive, finite number or timedelta."""
    value = expires.total_seconds() if isinstance(expires, timedelta) else expires
    return max(int(check_number(name, value, positive=True, finite=True)), 1)


def try_lock(fd: int) -> bool | None:
    """Try to lock ``fd`` exclusively: True if got, False if someone holds it, None if unknown."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True
