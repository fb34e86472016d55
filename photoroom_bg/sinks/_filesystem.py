"""FileSystemSink: atomic, durable writes under a root folder."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import mimetypes
import os
import random
import re
import stat
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from .. import _jsonsafe, _threads
from .._images import NotARegularFile, read_regular_file
from .._numbers import check_flag
from .._redact import printable
from ..errors import (
    BucketNotFoundError,
    ConfigurationError,
    ObjectNotFoundError,
    StorageAuthError,
    StorageError,
    StorageFullError,
    UnsafeKeyError,
)
from ._base import StoredObject
from ._common import DISK_FULL, check_key, seconds, sha256_checksum, try_lock

__all__ = ["FileSystemSink"]

T = TypeVar("T")

_META_SUFFIX = ".meta.json"
_CHECKSUM_XATTR = "user.photoroom_bg.checksum"
# its value: the sha-256 digest, then the file's size and mtime in ns. 48 bytes, which ext4
# keeps in the inode beside the attribute's name (with 256-byte inodes, as mkfs makes them);
# the 97 characters of the text form (still read) took a 4 KiB block of their own per file
_XATTR_STAMP = struct.Struct("<32sqq")
# ".<name>.<12 hex>.tmp": what _atomic_write makes; never a key, and removed when stale
_TEMP_NAME = re.compile(r"\A\..+\.[0-9a-f]{12}\.tmp\Z", re.DOTALL)
_TEMP_EXTRA = len("..123456789abc.tmp")
_TEMP_ATTEMPTS = 5  # names drawn for a temporary file before giving up
#: A temporary file nobody holds a lock on is left alone this long after its last write (a
#: writer in another process locks it right after creating it).
STALE_UNLOCKED_AFTER = 10.0
#: Where locks do not work, a temporary file is removed only once it is this old.
STALE_ANYWAY_AFTER = 24 * 3600.0


def _fsync_dir(folder: str | Path) -> None:
    """Make a folder's entries (a rename, a new file or folder in it) survive power loss."""
    if not hasattr(os, "O_DIRECTORY"):  # pragma: no cover - Windows cannot open folders
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FolderSyncs:
    """Folder fsyncs shared by the puts that renamed into the same folder meanwhile.

    A put takes a ticket after its rename and returns only once an fsync of the folder that
    began after that ticket was taken has ended: whichever put finds no fsync under way starts
    one, covering every ticket taken so far, and the others wait for it (or start the next
    one). So at most one fsync per folder runs at a time, and concurrent puts share it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        # keyed by the folder's path as a str (a Path hashes its parts anew on every look-up)
        self._tickets: dict[str, int] = {}  # renames into the folder so far
        self._synced: dict[str, int] = {}  # tickets covered by a finished fsync
        self._running: set[str] = set()
        self._users: dict[str, int] = {}  # tickets not yet waited for: the entries live on

    def after_rename(self, folder: str) -> None:
        """Return once an fsync of ``folder`` begun after this call has ended."""
        self.wait(folder, self.take(folder))

    def take(self, folder: str) -> int:
        """A ticket for the renames into ``folder`` done so far; give it to :meth:`wait`."""
        with self._lock:
            ticket = self._tickets[folder] = self._tickets.get(folder, 0) + 1
            self._users[folder] = self._users.get(folder, 0) + 1
            return ticket

    def wait(self, folder: str, ticket: int) -> None:
        """Return once an fsync of ``folder`` begun after ``ticket`` was taken has ended."""
        with self._lock:
            try:
                while self._synced.get(folder, 0) < ticket:
                    if folder in self._running:
                        self._done.wait()
                        continue
                    self._running.add(folder)
                    covered = self._tickets[folder]  # taken before this fsync begins
                    self._lock.release()
                    try:
                        _fsync_dir(folder)
                    finally:
                        self._lock.acquire()
                        self._running.discard(folder)
                        self._done.notify_all()
                    self._synced[folder] = max(self._synced.get(folder, 0), covered)
            finally:
                self._users[folder] -= 1
                if not self._users[folder]:  # no put of this folder left: forget it
                    del self._users[folder], self._tickets[folder]
                    self._synced.pop(folder, None)


def _nothing_else_ready() -> bool:
    """True when the running asyncio loop has no other callback due before a task that
    yields now would resume: a task yielding is put behind the callbacks already due, and
    those the next poll of the loop brings come after it. False when it cannot tell (trio,
    an event loop that keeps its queue elsewhere)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio
        return False
    ready = getattr(loop, "_ready", None)
    return isinstance(ready, collections.deque) and not ready


def _xattr_stamp(checksum: str, info: os.stat_result) -> bytes:
    """:func:`_stamp` packed for the extended attribute (see :data:`_XATTR_STAMP`)."""
    digest = bytes.fromhex(checksum.removeprefix("sha256:"))
    return _XATTR_STAMP.pack(digest, info.st_size, info.st_mtime_ns)


def _xattr_unstamp(value: bytes, info: os.stat_result) -> str | None:
    """The checksum an extended attribute holds, if it still describes the file."""
    if len(value) != _XATTR_STAMP.size:  # the text form, or nothing
        return _unstamp(value.decode("ascii", "replace"), info) if value else None
    digest, size, mtime_ns = _XATTR_STAMP.unpack(value)
    matches = size == info.st_size and mtime_ns == info.st_mtime_ns
    return f"sha256:{digest.hex()}" if matches else None


def _weak_validator(info: os.stat_result) -> str:
    """What stands for a checksum nobody recorded: size and mtime, as web servers make ETags
    for files (it changes whenever the file does, but it is not a digest of the content)."""
    return f'W/"{info.st_size:x}-{info.st_mtime_ns:x}"'


def _stamp(checksum: str, info: os.stat_result) -> str:
    """A checksum tied to the file it describes: it is believed only while size and mtime match."""
    return f"{checksum} {info.st_size} {info.st_mtime_ns}"


def _unstamp(value: str, info: os.stat_result) -> str | None:
    checksum, _, rest = value.partition(" ")
    return checksum if rest == f"{info.st_size} {info.st_mtime_ns}" else None


class FileSystemSink:
    """Stores objects as files under ``root``.

    Writes are atomic and durable (atomic only with ``durable=False``, below): the bytes go
    to a temporary file in the same folder (``.<name>.<random>.tmp``), are fsynced, renamed
    over the final name, and the folder is fsynced, so once :meth:`put` returns the object
    survives a crash or power loss, and a crash never leaves a half-written image under a
    real key. Puts into one folder at the same time share its fsync: each returns after an
    fsync of the folder begun after its own rename (on the event loop, the puts that rename
    in one turn of the loop share one).
    Temporary files left by a killed process are removed by a later put into the same folder
    once no writer holds them; they are never taken for objects. Folders are created as
    needed. Keys that would leave ``root`` (``..``, absolute paths, NUL bytes, backslashes,
    symlinks pointing outside) or that the file system cannot hold (a name over its length
    limit) are refused with
    :class:`~photoroom_bg.errors.UnsafeKeyError`. A symlinked folder inside ``root`` is
    followed; a symlink at an object's own name is replaced by :meth:`put`, as the rename
    replaces whatever is there (nothing is written through it), and followed by reads only
    when it stays inside ``root``. Every failure is a
    :class:`~photoroom_bg.errors.StorageError`: a full disk raises
    :class:`~photoroom_bg.errors.StorageFullError` (and leaves no temporary file behind), a
    permission or read-only file system :class:`~photoroom_bg.errors.StorageAuthError`.

    The sha-256 of each object is recorded when it is written (in an extended attribute where
    the file system has them, and in the metadata file), so :meth:`stat` never reads an
    object back. With ``checksums=False`` nothing is hashed: ``checksum`` is then a weak
    validator, ``W/"<size>-<mtime>"`` (hex), as :meth:`stat` gives for files written by others.

    Args:
        root: the folder (created if missing).
        write_metadata: also store content type, metadata and checksum in a
            ``<key>.meta.json`` file.
        checksums: hash each object with sha-256 as it is written (the default). ``False``
            saves that CPU (about 0.17 ms for a 300 KB cut-out); writes stay as atomic and
            durable.
        durable: fsync each object and its folder before :meth:`put` returns (the default).
            ``False`` leaves writing back to the operating system, as a plain file write
            does: writes stay atomic (a reader sees the old object or the new one, never
            half of one), but a power cut or a crash of the machine can lose the objects put
            in the last seconds, or leave them empty. For scratch output, and where an fsync
            is slow. A :class:`~photoroom_bg.BatchRemover` resuming from a manifest then
            checks that each recorded output is still there and not empty, and makes again
            the ones that are not (paying for them again), where with a durable sink it
            trusts the manifest.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        write_metadata: bool = False,
        checksums: bool = True,
        durable: bool = True,
    ) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise ConfigurationError(
                f"root must be a folder (a str or os.PathLike), not {type(root).__name__}"
            )
        if not os.fspath(root):  # an unset variable, most often: not "this folder"
            raise ConfigurationError("the sink's folder is an empty path: name one ('.' is here)")
        try:
            # os.path's expanduser: Path's raises RuntimeError where no home is known
            self.root = Path(os.path.expanduser(root)).resolve()
        except (ValueError, OSError) as exc:  # a NUL byte, a symlink loop...
            shown = printable(os.fspath(root))
            raise ConfigurationError(f"{shown!r}: not a usable folder ({exc})") from None
        self.write_metadata = check_flag("write_metadata", write_metadata)
        self.checksums = check_flag("checksums", checksums)
        self.durable = check_flag("durable", durable)
        # what a key's parts are joined to ("" for the file system's root, itself a separator)
        self._root_prefix = str(self.root).rstrip(os.sep)
        self._cleaned: set[str] = set()
        self._cleaned_lock = threading.Lock()
        self._name_max_bytes: int | None = None
        self._folder_syncs = _FolderSyncs()
        # separately: a slow fsync sends puts to threads, and leaves look-ups where they are
        self._quick_puts = _threads.QuickCalls("puts of FileSystemSink")
        self._quick_lookups = _threads.QuickCalls("look-ups of FileSystemSink")

    def __repr__(self) -> str:
        return f"FileSystemSink({printable(str(self.root))!r})"

    def path(self, key: str) -> Path:
        """The file that holds ``key``; refuses keys that escape the root or cannot be stored."""
        return Path(self._locate(key)[0])

    def _locate(self, key: str, *, to_replace: bool = False) -> tuple[str, bool]:
        """:meth:`path` as a str, and whether something may be there (False: a part of it is
        missing). (A str: a batch does this twice per image, and a Path costs more to make
        than the ``lstat``.) ``to_replace``: the path a put renames its file to; the last
        part is not looked at, since a rename replaces whatever is there (a symlink
        included: it is not followed), and nothing is written through it."""
        check_key(key)
        parts = key.split("/")
        if key.endswith(_META_SUFFIX):
            raise UnsafeKeyError(f"key {key!r} uses the reserved suffix {_META_SUFFIX}")
        if _TEMP_NAME.match(parts[-1]):
            raise UnsafeKeyError(f"key {key!r} is named like one of the sink's temporary files")
        self._check_lengths(key, parts)
        # The root is resolved once, and keys have no ``..``: only a symlink under the root
        # can lead elsewhere. Look at the parts that exist (usually one or two ``lstat``);
        # resolve the whole path only when one of them is a symlink. (Strings on the way
        # down, not Paths: a batch does this twice per image.)
        current = self._root_prefix
        for index, part in enumerate(parts, start=1):
            if to_replace and index == len(parts):
                return f"{current}{os.sep}{part}", True
            current = f"{current}{os.sep}{part}"
            try:
                mode = os.lstat(current).st_mode
            except (FileNotFoundError, NotADirectoryError):
                # nothing below exists yet: no symlink to follow
                return f"{self._root_prefix}{os.sep}{key}", False
            except OSError as exc:
                raise self._error(exc, "resolve", key) from None
            if stat.S_ISLNK(mode):
                if to_replace:  # the folder resolved, the last part as it is
                    folder = Path(self._root_prefix, *parts[:-1])
                    return f"{self._resolved(key, folder)}{os.sep}{parts[-1]}", True
                return str(self._resolved(key, Path(f"{self._root_prefix}{os.sep}{key}"))), True
            if index < len(parts) and not stat.S_ISDIR(mode):  # no put could ever succeed
                raise UnsafeKeyError(
                    f"key {key!r} cannot be stored under {printable(str(self.root))}: "
                    f"{printable(current)} is a file, not a folder"
                )
        return current, True

    def _resolved(self, key: str, target: Path) -> Path:
        try:
            resolved = target.resolve()
        except OSError as exc:
            raise self._error(exc, "resolve", key) from None
        if not resolved.is_relative_to(self.root):
            raise UnsafeKeyError(f"key {key!r} resolves outside {printable(str(self.root))}")
        return resolved

    def _name_max(self) -> int:
        if self._name_max_bytes is None:
            folder = next((p for p in (self.root, *self.root.parents) if p.is_dir()), None)
            try:
                self._name_max_bytes = int(os.pathconf(folder or "/", "PC_NAME_MAX"))
            except (OSError, ValueError, AttributeError):
                self._name_max_bytes = 255
        return self._name_max_bytes

    def _check_lengths(self, key: str, parts: list[str]) -> None:
        name_max = self._name_max()
        for index, part in enumerate(parts):
            size = len(part) if part.isascii() else len(os.fsencode(part))
            # the last part also names the temporary file and the metadata file beside it
            room = name_max - (_TEMP_EXTRA + len(_META_SUFFIX) if index == len(parts) - 1 else 0)
            if size > room:
                raise UnsafeKeyError(
                    f"key {key!r}: the name {printable(part)[:40]!r}... is {size} bytes; this "
                    f"file system allows {room} here"
                )

    def _error(self, exc: OSError, action: str, key: str) -> StorageError:
        """The typed error for an ``OSError`` met while doing ``action`` to ``key``."""
        reason = exc.strerror or str(exc)
        where = f"{action} {key!r} under {printable(str(self.root))}"
        code = exc.errno
        if code in DISK_FULL:
            return StorageFullError(f"no space left to {where} ({reason})")
        if code == errno.ENAMETOOLONG:
            return UnsafeKeyError(f"key {key!r} is too long for this file system ({reason})")
        if code == errno.ELOOP:
            return UnsafeKeyError(f"key {key!r} runs into a symlink loop ({reason})")
        if code in (errno.EACCES, errno.EPERM, errno.EROFS):
            return StorageAuthError(f"cannot {where}: {reason}")
        if code in (errno.ENOTDIR, errno.ENOENT) and action == "write":
            # the root itself gone from under the sink (a file, or a link to nothing, in its
            # place): no put can succeed, so this stops a batch rather than being retried
            problem = self._root_problem()
            if problem is not None:
                return BucketNotFoundError(f"cannot {where}: {problem}")
        if code in (errno.ENOENT, errno.ENOTDIR) and action in ("read", "describe"):
            return ObjectNotFoundError(f"no object {key!r} under {printable(str(self.root))}")
        if code == errno.EISDIR:
            return UnsafeKeyError(f"key {key!r} names a folder ({reason})")
        return StorageError(f"cannot {where}: {reason}")

    async def _run(
        self,
        action: str,
        key: str,
        work: Callable[[], T],
        quick: _threads.QuickCalls | None = None,
    ) -> T:
        """Run blocking file work in a thread (or in place while ``quick`` calls are quick),
        every ``OSError`` made a typed error."""

        def guarded() -> T:
            try:
                return work()
            except OSError as exc:
                raise self._error(exc, action, key) from None

        if quick is not None:
            return await quick.run(guarded)
        return await _threads.run_sync(guarded)

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
    ) -> StoredObject:
        """Write ``data`` to ``root/key`` atomically and durably (replacing any previous file)."""
        meta = dict(metadata or {})
        quick = self._quick_puts if len(data) <= _threads.QUICK_BYTES else None

        def write() -> tuple[StoredObject, str]:
            """The key checked, the object hashed (unless ``checksums=False``), written and
            renamed; and its folder."""
            target = self._locate(key, to_replace=True)[0]
            checksum = sha256_checksum(data) if self.checksums else None
            folder, info = self._write(target, data, content_type, meta, checksum)
            described = checksum or _weak_validator(info)
            return self._describe(key, target, len(data), content_type, described, meta), folder

        if not self.durable:  # written and renamed: nothing to wait for

            def write_only() -> StoredObject:
                return write()[0]

            return await self._run("write", key, write_only, quick)
        if quick is None or quick.threaded:

            def write_durably() -> StoredObject:  # in one trip to a worker thread
                described, folder = write()
                self._folder_syncs.after_rename(folder)
                return described

            return await self._run("write", key, write_durably, quick)

        def write_now() -> tuple[StoredObject, str, int]:
            described, folder = write()
            return described, folder, self._folder_syncs.take(folder)

        # On the event loop: written, fsynced and renamed now; the folder's fsync waits for
        # the other puts of this turn of the loop to rename too, and then covers them all
        # (one fsync of the folder for a burst of cut-outs, not one each).
        described, folder, ticket = await self._run("write", key, write_now, quick)

        def synced() -> None:
            self._folder_syncs.wait(folder, ticket)

        if not quick.threaded and _nothing_else_ready():
            # no other task runs before this one would resume: none can rename into the
            # folder meanwhile, so waiting for them would only cost a turn of the loop
            # (and in place, nothing here can be cancelled half-way)
            await self._run("write", key, synced, quick)
            return described
        with anyio.CancelScope(shield=True):  # renamed: see it onto the disk in any case
            try:
                await anyio.lowlevel.checkpoint()
            finally:
                await self._run("write", key, synced, quick)
        return described

    def _write(
        self,
        target: str,
        data: bytes,
        content_type: str,
        meta: dict[str, str],
        checksum: str | None,
    ) -> tuple[str, os.stat_result]:
        """Write the object (and its metadata file) and rename it into place; return the
        folder, which the caller then fsyncs (through ``self._folder_syncs``) to make the
        renames durable, and the object's status as written."""
        folder, name = os.path.split(target)
        self._remove_stale_temporaries(folder)
        info = self._atomic_write(folder, name, data, checksum)
        if self.write_metadata:
            sidecar: dict[str, object] = {"content_type": content_type, "metadata": meta}
            if checksum is not None:
                sidecar["checksum"] = _stamp(checksum, info)
            self._atomic_write(folder, name + _META_SUFFIX, json.dumps(sidecar).encode())
        return folder, info

    def _make_folders(self, folder: Path) -> None:
        """Create ``folder`` and its missing parents, each one's entry made durable."""
        missing: list[Path] = []
        while not folder.is_dir():
            missing.append(folder)
            if folder.parent == folder:
                break
            folder = folder.parent
        for made in reversed(missing):
            with contextlib.suppress(FileExistsError):  # another writer made it first
                made.mkdir()
            if self.durable:
                _fsync_dir(made.parent)

    def _atomic_write(
        self, folder: str, name: str, data: bytes, checksum: str | None = None
    ) -> os.stat_result:
        """Write ``folder/name`` through a temporary file beside it, fsynced and renamed."""
        # Not mkstemp: its files are 0600. Created like open() would, so the umask decides
        # who may read the cut-outs (0644 under the usual umask). (Paths as str: this runs for
        # every image, and pathlib would cost more than the system calls.)
        target = f"{folder}{os.sep}{name}"
        temp, fd = self._create_temporary(folder, name)
        # the fd stays open (and locked) until the rename, so a cleaner in another process
        # can tell this file is being written
        try:
            try_lock(fd)
            view = memoryview(data)
            while view:  # straight to the file: no buffered copy, no second descriptor
                view = view[os.write(fd, view) :]
            info = os.fstat(fd)
            if checksum is not None:  # before the fsync, which then makes it durable too
                _set_xattr(fd, _xattr_stamp(checksum, info))
            if self.durable:
                os.fsync(fd)
            os.replace(temp, target)  # durable once the caller's fsync of the folder ends
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        finally:
            os.close(fd)
        return info

    def _create_temporary(self, folder: str, name: str) -> tuple[str, int]:
        """A new temporary file beside ``folder/name``, and its descriptor.

        Its name ends in 12 random hex digits: from the process's pseudo-random generator
        (reseeded in a forked child), not the system's (a system call per image, for names
        that need only be unlikely to meet). ``O_EXCL`` makes sure the file is new: a name
        taken already, by chance or on purpose, is drawn again."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        flags |= getattr(os, "O_CLOEXEC", 0)
        for attempt in range(_TEMP_ATTEMPTS):
            temp = f"{folder}{os.sep}.{name}.{random.getrandbits(48):012x}.tmp"
            try:
                return temp, os.open(temp, flags, 0o666)
            except FileNotFoundError:  # a new folder: make it (and its parents), then write
                self._make_folders(Path(folder))
                return temp, os.open(temp, flags, 0o666)
            except FileExistsError:
                if attempt == _TEMP_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _remove_stale_temporaries(self, folder: str) -> None:
        """Remove the temporary files a killed writer left in ``folder`` (once per folder)."""
        with self._cleaned_lock:
            if folder in self._cleaned:
                return
            self._cleaned.add(folder)
        for path in _temporaries(folder):
            _remove_if_stale(path)

    def _describe(
        self,
        key: str,
        target: str,
        size: int,
        content_type: str,
        checksum: str,
        meta: Mapping[str, str],
    ) -> StoredObject:
        uri = _file_uri(target)
        return StoredObject(
            key=key,
            size=size,
            content_type=content_type,
            checksum=checksum,
            uri=uri,
            url=uri,
            metadata=dict(meta),
        )

    async def exists(self, key: str) -> bool:
        """True when ``root/key`` is a file.

        Raises:
            BucketNotFoundError: the root cannot be a folder (it, or a folder above it, is
                a file; or it is a link to nothing).
            StorageAuthError: there is no such file, and this process may not write in the
                root (or in the nearest folder above it that exists).
            UnsafeKeyError: the key cannot be stored here: too long for this file system,
                or a folder it names is a file.
        """

        def check() -> bool:
            if _is_regular(self.path(key)):
                return True
            self._check_root()
            return False

        return await self._run("check", key, check, self._quick_lookups)

    def _check_root(self) -> None:
        """Refuse a root that no put could ever write to (see :meth:`_root_problem`), or
        that this process may not write to: a batch's first look-up, before anything is
        paid for, said yes to a read-only folder, and every paid cut-out then failed."""
        problem = self._root_problem()
        if problem is not None:
            raise BucketNotFoundError(problem)
        folder = self._nearest_folder()
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StorageAuthError(
                f"cannot write under {printable(str(self.root))}: "
                f"{printable(str(folder))} is not writable by this process (its permissions, "
                "or a read-only file system)"
            )

    def _nearest_folder(self) -> Path:
        """The root, or the nearest folder above it that exists (where a put writes or
        makes its first folder)."""
        for folder in (self.root, *self.root.parents):
            if os.path.isdir(folder):
                return folder
        return Path(self.root.anchor)  # pragma: no cover - the root always exists

    def _root_problem(self) -> str | None:
        """Why no put could write under the root, if that is so: it, or the nearest part of
        its path that exists, is not a folder, or it is a link to nothing."""
        for folder in (self.root, *self.root.parents):
            try:
                mode = os.stat(folder).st_mode
            except (FileNotFoundError, NotADirectoryError):
                if not os.path.islink(folder):
                    continue
                what = "a link to nothing"  # mkdir cannot make the folder: the link is there
            else:
                if stat.S_ISDIR(mode):
                    return None
                what = "a file"
            return (
                f"{printable(str(self.root))} cannot be the sink's folder: "
                f"{printable(str(folder))} is {what}"
            )
        return None

    async def get(self, key: str) -> bytes:
        """The bytes of ``root/key``."""
        target = self.path(key)

        def read() -> bytes:
            try:
                return read_regular_file(target, sys.maxsize - 1)
            except IsADirectoryError:
                raise ObjectNotFoundError(f"no object {key!r} under {self.root}") from None
            except NotARegularFile as exc:
                raise StorageError(f"{key!r} under {self.root} is {exc.kind}") from None

        return await self._run("read", key, read)

    async def stat(self, key: str) -> StoredObject:
        """Describe ``root/key`` from the file's status, without reading it.

        ``checksum`` is the sha-256 recorded when the object was written, if the extended
        attribute or metadata file holding it still matches the file's size and mtime; else a
        weak validator ``W/"<size>-<mtime>"`` (hex), as web servers make ETags for files.
        """
        found = await self._stat_or_none(key)
        if found is None:
            raise ObjectNotFoundError(f"no object {key!r} under {printable(str(self.root))}")
        return found

    async def _stat_or_none(self, key: str) -> StoredObject | None:
        """:meth:`stat`, or ``None`` for a missing object: what a batch asks of every key
        before it pays for a cut-out (most are missing, and an exception for each would
        cost more than the ``lstat`` that tells)."""
        return await self._run("describe", key, lambda: self._stat(key), self._quick_lookups)

    def _puts_in_place(self, size: int) -> bool:
        """Whether a put of ``size`` bytes would run in place now, on the event loop, with
        no turn of the loop before its rename: then nothing in it can be cancelled or time
        out, and its caller needs no cancel scope around it (a put that then waits for the
        folder's fsync shields that wait itself)."""
        return size <= _threads.QUICK_BYTES and not self._quick_puts.threaded

    def _looks_up_in_place(self) -> bool:
        """Whether a look-up would run in place now (it never gives the loop a turn)."""
        return not self._quick_lookups.threaded

    def _stat(self, key: str) -> StoredObject | None:
        where, present = self._locate(key)
        if not present:  # the lstat of the path already said so: no second look
            return None
        target = Path(where)
        try:
            info = os.stat(target)
        except (FileNotFoundError, NotADirectoryError):  # gone since the lstat
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        meta: dict[str, str] = {}
        checksum = _xattr_unstamp(_get_xattr(target), info)
        sidecar = target.with_name(target.name + _META_SUFFIX)
        if sidecar.is_file():
            try:
                stored = _jsonsafe.loads(sidecar.read_bytes())
            except ValueError:
                stored = {}
            if isinstance(stored, dict):
                content_type = str(stored.get("content_type") or content_type)
                meta = dict(stored.get("metadata") or {})
                checksum = checksum or _unstamp(str(stored.get("checksum", "")), info)
        if checksum is None:
            checksum = _weak_validator(info)
        return self._describe(key, where, info.st_size, content_type, checksum, meta)

    async def url(self, key: str, *, expires: float | timedelta = 3600) -> str:
        """The ``file://`` URI of ``root/key`` (``expires`` is checked as S3Sink checks it;
        a file URI does not expire)."""
        seconds(expires)
        target = self.path(key)
        if not await self._run("check", key, lambda: _is_regular(target)):
            raise ObjectNotFoundError(f"no object {key!r} under {self.root}")
        return target.as_uri()

    async def delete(self, key: str) -> None:
        """Remove ``root/key`` (and its metadata file) if present."""
        target = self.path(key)

        def remove() -> None:
            for path in (target, target.with_name(target.name + _META_SUFFIX)):
                path.unlink(missing_ok=True)

        await self._run("delete", key, remove)

    async def aclose(self) -> None:
        """Nothing to release."""


def _file_uri(path: str) -> str:
    """``Path(path).as_uri()`` for an absolute path, without making a Path on POSIX."""
    if os.name == "posix":
        return "file://" + urllib.parse.quote_from_bytes(os.fsencode(path))
    return Path(path).as_uri()  # pragma: no cover - Windows


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _set_xattr(fd: int, value: bytes) -> None:
    setxattr: Any = getattr(os, "setxattr", None)
    if setxattr is not None:
        with contextlib.suppress(OSError):  # the file system has no user attributes
            setxattr(fd, _CHECKSUM_XATTR, value)


def _get_xattr(path: Path) -> bytes:
    getxattr: Any = getattr(os, "getxattr", None)
    if getxattr is None:
        return b""
    try:
        return bytes(getxattr(path, _CHECKSUM_XATTR))
    except OSError:
        return b""


def stored_keys(root: Path) -> set[str]:
    """The keys of the objects a :class:`FileSystemSink` keeps under ``root`` (none when it
    does not exist): its metadata and temporary files left out. Blocking: call it off the
    event loop."""
    keys: set[str] = set()
    for folder, _dirs, files in os.walk(root):
        base = Path(folder).relative_to(root)
        for name in files:
            if not name.endswith(_META_SUFFIX) and not _TEMP_NAME.match(name):
                keys.add((base / name).as_posix())
    return keys


def _temporaries(folder: str) -> Iterator[str]:
    try:
        with os.scandir(folder) as entries:
            names = [e.path for e in entries if _TEMP_NAME.match(e.name)]
    except OSError:
        return
    yield from names


def _remove_if_stale(path: str) -> None:
    """Remove a temporary file its writer is gone from; leave one still being written."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return
        age = time.time() - info.st_mtime
        free = try_lock(fd)  # a live writer holds its lock until the rename
        stale = (free and age > STALE_UNLOCKED_AFTER) or (free is None and age > STALE_ANYWAY_AFTER)
        if stale and os.lstat(path).st_ino == info.st_ino:  # still the file we judged
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)
