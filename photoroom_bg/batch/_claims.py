"""Outputs being made right now by any batch on this machine, by destination and key.

A batch that is about to look a key up and pay for its cut-out claims the key first; a batch
that wants the same key in the same destination (the same remover submitted twice, two
removers on one folder, two jobs of a service, two processes on one folder or bucket prefix)
waits for the claim and then looks again, so it finds the cut-out stored instead of paying for
it once more.

Within a process, batches may run on different event loops in different threads: a claim's
holder wakes its waiters thread-safely, on each waiter's own loop (asyncio or trio). Between
processes (on Linux), a folder or bucket prefix is claimed with a lock on one byte of a file
in a private folder of the temporary directory (see below): the kernel releases it when a
holder dies, however it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import importlib
import os
import stat
import struct
import tempfile
import threading
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

from .._logs import get_logger
from .._s3client import configured_endpoint
from ..sinks import FileSystemSink, S3Sink

__all__ = ["making", "place_of", "stored_under"]

logger = get_logger("photoroom_bg.batch")

_lock = threading.Lock()
_held: dict[tuple[Hashable, str], list[Callable[[], None]]] = {}  # claim -> its waiters' wakes


def place_of(sink: object) -> Hashable:
    """Where ``sink`` stores: what comes before a key's name in the name of what it stores
    (last), and where that name lives. Two sinks over one folder or bucket prefix give the
    same place, and a key under a sink's subfolder or longer prefix the same claim as the
    key that names it from the parent (see :func:`_claim`). A view of another sink (its
    ``view_of``) stores where that sink does."""
    if isinstance(sink, FileSystemSink):
        return ("file", str(sink.root).rstrip(os.sep) + os.sep)
    if isinstance(sink, S3Sink):
        return ("s3", _endpoint(sink.endpoint_url), sink.bucket, sink.prefix)
    under = getattr(sink, "view_of", None)
    if under is not None:
        return place_of(under)
    return ("object", id(sink))  # alive while a claim on it is held: the id is not reused


def stored_under(sink: object, s3_endpoint: str | None) -> str | None:
    """Where ``sink`` stores, as :func:`~photoroom_bg.sources.iter_sources` takes what its
    listings leave out: a folder, or an ``s3://bucket/prefix/`` when its server is the one
    ``s3://`` sources are listed from (``s3_endpoint``); ``None`` for other sinks."""
    if isinstance(sink, FileSystemSink):
        return str(sink.root)
    if isinstance(sink, S3Sink) and _endpoint(sink.endpoint_url) == _endpoint(s3_endpoint):
        return f"s3://{sink.bucket}/{sink.prefix}"
    return None


def _endpoint(url: str | None) -> str | None:
    """An S3 endpoint as one spelling: the one botocore takes when none is given
    (``$AWS_ENDPOINT_URL_S3``...), scheme and host in lower case, the default port left
    out, ``localhost`` as ``127.0.0.1``, no trailing ``/``. A sink given the server that
    the reader found in the environment, or spelled another way, was taken for another
    server, and a re-run listed its cut-outs as inputs and paid for them again."""
    url = url or configured_endpoint()
    if url is None:
        return None
    parts = urllib.parse.urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    host = "127.0.0.1" if host == "localhost" else host
    try:
        port = parts.port
    except ValueError:  # not a port: compared as written
        port = None
    default = {"http": 80, "https": 443}.get(scheme)
    where = host if port in (None, default) else f"{host}:{port}"
    return f"{scheme}://{where}{parts.path.rstrip('/')}"


def _claim(place: Hashable, key: str) -> tuple[Hashable, str]:
    """What ``key`` in ``place`` claims: the full name of the file or object it stores."""
    if isinstance(place, tuple) and place[0] in ("file", "s3"):
        return place[:-1], place[-1] + key
    return place, key


def _event() -> tuple[Callable[[], Awaitable[Any]], Callable[[], None]]:
    """An event of the running loop, and a way to set it from any thread (a no-op once that
    loop has ended)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio (not a dependency: imported only under it)
        trio: Any = importlib.import_module("trio")

        trio_event = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake_trio() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(trio_event.set)

        return trio_event.wait, wake_trio
    event = asyncio.Event()

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the waiter's loop is closed
            loop.call_soon_threadsafe(event.set)

    return event.wait, wake


@contextlib.asynccontextmanager
async def making(
    place: Hashable, key: str, wait: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
) -> AsyncIterator[bool]:
    """Hold ``key`` in ``place`` for the block, after whoever holds it now (in this process,
    then on this machine); ``wait`` awaits (so a batch can stop its waiting). Yields whether
    another batch held it first."""
    claim = _claim(place, key)
    waited = False
    while True:
        with _lock:
            waiters = _held.get(claim)
            if waiters is None:
                _held[claim] = []
                break
            until, wake = _event()
            waiters.append(wake)
        try:
            await wait(until)
        finally:
            with _lock, contextlib.suppress(ValueError):
                waiters.remove(wake)  # still there if this wait was cancelled
        waited = True
    try:
        byte = _claim_byte(place, key)
        other = None if byte is None else await _lock_byte(*byte, wait)
        try:
            yield waited or bool(other)
        finally:
            if byte is not None and other is not None:
                _unlock_byte(*byte)
    finally:
        with _lock:
            woken = _held.pop(claim)
        for wake in woken:
            wake()


# -- between processes -------------------------------------------------------------------------
#
# One file per user; a claim is an exclusive lock of one byte of it, at an offset hashed from
# the place and the key (62 bits: no two outputs share one in practice). The locks are Linux's
# open-file-description locks: not merged per process as POSIX record locks are (so no false
# deadlock reports), and released by the kernel when the process ends, however it ends. Each
# process opens the file once; a forked child closes the descriptor it inherited (which holds
# its parent's locks) and opens its own. Within a process, ``_held`` keeps one claim per key.

_FLOCK = struct.Struct("hhqqi4x")  # struct flock on 64-bit Linux
_file: int | None = None  # this process's claim file; -1: none can be opened here


def _claim_byte(place: Hashable, key: str) -> tuple[int, int] | None:
    """The claim file's descriptor and the byte that claims ``key`` in ``place`` (``None``:
    no claim between processes: a sink object of this process only, or none here)."""
    if not isinstance(place, tuple) or place[0] == "object" or _OFD is None:
        return None
    fd = _claim_file()
    if fd is None:
        return None
    digest = hashlib.sha256(repr(_claim(place, key)).encode("utf-8", "backslashreplace")).digest()
    return fd, int.from_bytes(digest[:8], "big") >> 2


def _claim_file() -> int | None:
    global _file
    with _lock:
        if _file is None:
            try:
                _file = os.open(
                    os.path.join(_claims_folder(), "claims"),
                    os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                )
            except OSError as exc:  # said once, not tried again for every job
                logger.debug("no claims between processes: %s", exc)
                _file = -1
        return None if _file < 0 else _file


@functools.cache
def _claims_folder() -> str:
    """This user's claim folder: made private, and refused unless it is ours alone."""
    uid = os.getuid()
    folder = os.path.join(tempfile.gettempdir(), f"photoroom-bg-claims-{uid}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder, 0o700)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
        raise OSError(f"{folder} is not a private folder of this user")
    return folder


def _set(fd: int, byte: int, kind: int, command: int) -> None:
    fcntl.fcntl(fd, command, _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0))


async def _lock_byte(
    fd: int, byte: int, wait: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
) -> bool | None:
    """Lock ``byte``: whether another process held it first, or ``None`` when locks cannot
    be taken here (the claim within this process still holds)."""
    assert _OFD is not None
    setlk, setlkw = _OFD
    try:
        _set(fd, byte, fcntl.F_WRLCK, setlk)
        return False
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            logger.debug("no claim between processes: %s", exc)
            return None
    # another process makes this output now: wait for it in a thread of its own
    until, wake = _event()
    state = {"got": False, "abandoned": False}
    guard = threading.Lock()

    def block() -> None:
        with contextlib.suppress(OSError):  # (then no claim between processes: as if free)
            _set(fd, byte, fcntl.F_WRLCK, setlkw)
        with guard:
            if not state["abandoned"]:
                state["got"] = True
                wake()
                return
        _unlock_byte(fd, byte)  # given up meanwhile

    threading.Thread(target=block, name="photoroom-bg claim", daemon=True).start()
    try:
        await wait(until)
    except BaseException:
        with guard:
            got = state["got"]
            state["abandoned"] = True
        if got:
            _unlock_byte(fd, byte)
        raise
    return True


def _unlock_byte(fd: int, byte: int) -> None:
    assert _OFD is not None
    with contextlib.suppress(OSError):
        _set(fd, byte, fcntl.F_UNLCK, _OFD[0])


def _forget_in_child() -> None:
    # a forked child has none of its parent's batches: not their claims, not a lock another
    # thread held at the fork, not the description (and its locks) that must not outlive them
    global _file, _held, _lock
    _lock, _held = threading.Lock(), {}
    if _file is not None and _file >= 0:
        with contextlib.suppress(OSError):
            os.close(_file)
    _file = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)

try:
    import fcntl

    _OFD: tuple[int, int] | None = (fcntl.F_OFD_SETLK, fcntl.F_OFD_SETLKW)
except (ImportError, AttributeError):  # pragma: no cover - not Linux: within the process only
    _OFD = None
if _FLOCK.size != 32 or struct.calcsize("P") != 8:  # pragma: no cover - not 64-bit
    _OFD = None
