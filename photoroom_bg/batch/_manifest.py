"""The manifest: one JSON line per finished job, appended and fsynced by one writer task.

Reading is forgiving: a line torn by a crash (even inside a UTF-8 character) is skipped and
counted, never a crash, and appending after a torn line starts on a new line.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .. import _jsonsafe
from .._images import file_kind
from .._logs import get_logger
from .._redact import printable
from ..errors import (
    ConfigurationError,
    ObjectNotFoundError,
    PhotoroomBGError,
    StorageError,
    StorageFullError,
)
from ..sinks import Sink
from ..sinks._common import DISK_FULL, try_lock
from ._jobs import JobResult, JobStatus

__all__ = [
    "Manifest",
    "ManifestState",
    "file_size",
    "finished_keys_in",
    "job_fields",
    "latest_records",
    "load_finished_keys",
    "load_sources",
    "manifest_in_use",
    "not_a_manifest",
    "read_from_sink",
    "read_manifest",
    "replayable_sources",
    "unsent_runs",
    "upload",
]

logger = get_logger("photoroom_bg.batch")

VERSION = 1
_STORED = (JobStatus.SUCCEEDED.value, JobStatus.SKIPPED.value)


def manifest_in_use(shown: str) -> str:
    """What a run is told when another run holds its manifest."""
    return (
        f"another run is using the manifest {shown}: two runs at once would pay twice for the "
        "images they share. Let it finish (or stop it), then run again: what it stored is "
        "skipped"
    )


def job_fields(result: JobResult) -> dict[str, Any]:
    """A job as JSON-ready fields: what manifests record and ``photoroom-bg --json`` prints."""
    return {
        "index": result.index,
        "source": result.source,
        "name": result.name,
        "status": result.status.value,
        "key": result.key,
        "uri": result.output.uri if result.output else None,
        "error_type": result.error_type,
        "error": result.error.message if result.error else None,
        "reason": result.reason,
        "attempts": result.attempts,
        "billed": result.billed,
        "possibly_billed": result.possibly_billed,
        "duration": round(result.duration, 4),
        "input_size": result.input_size,
        "output_size": result.output_size,
    }


def _record(
    result: JobResult, engine: str, options_digest: str, made_as: bytes | None
) -> dict[str, Any]:
    record = {
        "v": VERSION,
        "time": round(time.time(), 3),
        **job_fields(result),
        "engine": engine,
        "options_digest": options_digest,
    }
    if made_as is not None:
        record["made_as"] = made_as.hex()
    return record


@attrs.define
class ManifestState:
    """What a manifest records, read back.

    Attributes:
        finished: output keys recorded as stored (``succeeded`` or ``skipped``).
        spilled: output keys whose cut-out waits in the spill folder, with its ``file://``
            URI (made and paid for, not stored yet).
        made: for each cut-out recorded as stored, what it was made as (the first 16 bytes
            of the sha-256 of the input's digest, the options' digest and the engine), with
            the latest key it was stored under: a later run stores a copy of the same image
            under another name from there, instead of paying for it again.
        sources: the re-openable sources of the latest run (a ``retry_failed()`` run does
            not replace the batch's own list), or ``None`` when that run could not record
            them (bytes, file objects, generators, signed URLs).
        runs: run headers seen.
        torn: lines that could not be read (a crash mid-write).
    """

    finished: set[str] = attrs.field(factory=set)
    spilled: dict[str, str] = attrs.field(factory=dict)
    made: dict[bytes, str] = attrs.field(factory=dict)
    sources: list[str] | None = None
    runs: int = 0
    torn: int = 0

    def feed(self, lines: Iterable[bytes | str]) -> ManifestState:
        """Read more manifest lines into this state; return it."""
        for raw in lines:
            try:
                text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
                if not text.strip():
                    continue
                record = _jsonsafe.loads(text)
                if not isinstance(record, dict):
                    raise ValueError("not a record")
            except (UnicodeDecodeError, ValueError):
                self.torn += 1
                continue
            if record.get("type") == "run":
                self.runs += 1
                sources = record.get("sources")
                if record.get("retry"):  # a retry_failed() run: the batch's list stands
                    continue
                if sources is None:
                    # the latest run's own sources cannot be opened again: an older run's
                    # list in their place would skip what it stored and say nothing of these
                    self.sources = None
                elif isinstance(sources, list) and all(isinstance(s, str) for s in sources):
                    self.sources = sources
                else:  # a hand edit: a string would be replayed character by character
                    self.torn += 1
                continue
            key = record.get("key")
            if not key:
                continue
            key = str(key)
            status = record.get("status")
            if status in _STORED:
                self.finished.add(key)
                self.spilled.pop(key, None)
                made_as = _made_as(record.get("made_as"))
                if made_as is not None:
                    self.made[made_as] = key
            elif status == JobStatus.SPILLED.value and record.get("uri"):
                self.spilled[key] = str(record["uri"])
        return self


def _made_as(field: object) -> bytes | None:
    """A record's ``made_as`` (16 bytes as hex), or ``None`` when it has none (a record of
    an older version) or an unreadable one."""
    if not isinstance(field, str) or len(field) != 32:
        return None
    try:
        return bytes.fromhex(field)
    except ValueError:
        return None


#: How every manifest line begins (``json.dumps`` of a record, whose first field is ``v``).
_LINE_START = b'{"v"'


def latest_records(records: Iterable[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Each input's current record among the job records of a manifest that runs appended
    to (a resumed or retried batch records an input again): its last one, except that a
    later ``skipped`` of the same key leaves the ``succeeded`` that made the output."""
    latest: dict[int, dict[str, Any]] = {}
    for record in records:
        try:
            index = int(record["index"])
        except (KeyError, TypeError, ValueError):
            continue
        earlier = latest.get(index)
        if (
            earlier is not None
            and earlier.get("status") == JobStatus.SUCCEEDED.value
            and record.get("status") == JobStatus.SKIPPED.value
            and earlier.get("key") == record.get("key")
        ):
            continue
        latest[index] = record
    return latest


def not_a_manifest(head: bytes, where: str) -> ConfigurationError | None:
    """The error to raise when ``head``, the beginning of an existing file or object, shows
    it is not a manifest (a CSV named by mistake, say), which a run would append its records
    to; ``None`` when it is one, or empty. A file cut off within its first line still counts
    as a manifest, so that a crash while writing it never blocks the resume."""
    first = head.lstrip(b" \t\r\n").split(b"\n", 1)[0]  # a torn first line ends at "\n"
    start = first[: len(_LINE_START)]
    if not start or _LINE_START.startswith(start):
        return None
    return ConfigurationError(
        f"{where} is not a manifest (it begins {start.decode('utf-8', 'replace')!r}, a "
        "manifest begins with a JSON record): refusing to write to it; name a new file, or "
        "a manifest an earlier batch wrote"
    )


def _no_file(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` can hold no manifest, though it exists: a FIFO (opening it waits for a
    reader or writer forever), a device (``/dev/zero`` reads without end, until the memory
    runs out), a socket, a folder; ``None`` for a regular file, or nothing there."""
    try:
        kind = file_kind(os.stat(path).st_mode)
    except (OSError, ValueError):  # missing, unreachable, a NUL in the name: open() says
        return None
    if kind is None:
        return None
    kind = "a folder" if kind == "a directory" else kind  # as the command says it
    return f"the manifest at {printable(os.fspath(path))} is {kind}, not a file"


def read_manifest(path: str | os.PathLike[str]) -> ManifestState:
    """Read a manifest file (a missing one reads as empty).

    Raises:
        ConfigurationError: it cannot be read (a folder, no permission) or is not a manifest.
    """
    no_file = _no_file(path)
    if no_file is not None:
        raise ConfigurationError(no_file)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return ManifestState()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the manifest at {path}: {exc.strerror or exc}"
        ) from None
    foreign = not_a_manifest(data[:64], str(path))
    if foreign is not None:
        raise foreign
    state = ManifestState().feed(data.split(b"\n"))
    if state.torn:
        logger.warning("%s: skipped %d unreadable line(s) (a crash mid-write)", path, state.torn)
    return state


def load_finished_keys(path: str | os.PathLike[str]) -> set[str]:
    """Output keys a manifest records as stored (``succeeded`` or ``skipped``); torn lines
    are skipped."""
    return read_manifest(path).finished


def finished_keys_in(lines: Iterable[bytes | str]) -> set[str]:
    """:func:`load_finished_keys` for manifest lines already in hand (e.g. from a sink)."""
    return ManifestState().feed(lines).finished


def manifest_error(path: str | os.PathLike[str], exc: OSError) -> StorageError:
    """The typed error for a manifest that cannot be written: full, or broken."""
    reason = exc.strerror or f"{type(exc).__name__}: {exc}"
    if exc.errno in DISK_FULL:
        return StorageFullError(
            f"cannot write the manifest at {path} ({reason}): make room there, or give the "
            "manifest another place"
        )
    return StorageError(f"cannot write the manifest at {path} ({reason})")


class Manifest:
    """Appends job records to a JSON-lines file; a crash loses at most the records not yet
    flushed (the outputs themselves are in the sink, which a re-run asks).

    :meth:`open` creates the file (raising :class:`~photoroom_bg.errors.ConfigurationError`
    when it cannot, before anything is billed); :meth:`writer` is the one task that appends
    and fsyncs, in groups, off the event loop; :meth:`write` queues a record for it. When
    the file cannot be written (a full disk, an I/O error), the writer tells its caller
    once and drops the records after it: the outputs are in the sink, where a re-run
    finds them.

    Records hold the source without query string or credentials, the output key and URI,
    the status, the error type and message: never an API key or storage secret.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handle: IO[bytes] | None = None
        #: why the file could not be written, once it could not
        self.error: StorageError | None = None
        #: records dropped since
        self.dropped = 0
        self._send: MemoryObjectSendStream[bytes] | None = None
        self._receive: MemoryObjectReceiveStream[bytes] | None = None

    def __repr__(self) -> str:
        return f"Manifest({str(self.path)!r})"

    def open(self) -> None:
        """Create (or reopen) the file for appending; a torn last line is ended first.

        The file stays locked (``flock``) until :meth:`close`: a second run on the same
        manifest is refused with :class:`~photoroom_bg.errors.ConfigurationError`."""
        no_file = _no_file(self.path)
        if no_file is not None:
            raise ConfigurationError(no_file)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # unbuffered: a write that fails leaves nothing behind for close() to retry
            handle = open(self.path, "ab", buffering=0)  # noqa: SIM115
            try:
                if try_lock(handle.fileno()) is False:
                    # held until this run closes it (or its process ends): two runs on one
                    # manifest both see an image as not yet stored, and both pay for it
                    raise ConfigurationError(manifest_in_use(str(self.path)))
                if handle.tell() > 0:
                    with self.path.open("rb") as reader:
                        foreign = not_a_manifest(reader.read(64), str(self.path))
                        if foreign is not None:
                            raise foreign
                        reader.seek(-1, os.SEEK_END)
                        if reader.read(1) != b"\n":
                            handle.write(b"\n")  # never glue a record to a torn one
            except BaseException:
                handle.close()
                raise
        except OSError as exc:
            raise ConfigurationError(
                f"cannot write the manifest at {self.path}: {exc.strerror or exc}"
            ) from None
        except ValueError as exc:  # a NUL byte in the path: no file can have that name
            raise ConfigurationError(
                f"cannot write the manifest at {printable(str(self.path))!r}: {exc}"
            ) from None
        self._handle = handle
        self._send, self._receive = anyio.create_memory_object_stream[bytes](math.inf)

    def _append(self, lines: list[bytes]) -> None:
        assert self._handle is not None
        fd = self._handle.fileno()
        data = memoryview(b"".join(lines))
        while data:  # a write may take part of it (a disk filling up, a signal)
            data = data[os.write(fd, data) :]
        os.fsync(fd)

    def _append_or_drop(self, lines: list[bytes]) -> StorageError | None:
        """Append ``lines``; once the file cannot be written, count them as dropped.
        Returns the error when this call is the one that met it."""
        if self.error is None:
            try:
                self._append(lines)
                return None
            except OSError as exc:  # the file is torn at worst: readers skip a torn line
                self.error = manifest_error(self.path, exc)
                self.dropped += len(lines)
                return self.error
        self.dropped += len(lines)
        return None

    async def write_header(
        self,
        sources: list[str] | None,
        *,
        engine: str,
        options_digest: str,
        retry: bool = False,
    ) -> None:
        """Append a record of the run itself: its re-creatable sources (or ``None``)."""
        record: dict[str, Any] = {
            "v": VERSION,
            "type": "run",
            "time": round(time.time(), 3),
            "sources": sources,
            "engine": engine,
            "options_digest": options_digest,
        }
        if retry:
            record["retry"] = True
        # a name that is not valid UTF-8 keeps its escapes, as in the job records below
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "backslashreplace")
        try:
            await anyio.to_thread.run_sync(self._append, [line])
        except OSError as exc:  # before the run starts: nothing is billed
            raise manifest_error(self.path, exc) from None

    def write(
        self,
        result: JobResult,
        *,
        engine: str,
        options_digest: str,
        made_as: bytes | None = None,
    ) -> None:
        """Queue one record for the writer (never blocks); ``made_as``: what the job's
        cut-out is made as (see :attr:`ManifestState.made`), when the job got that far."""
        assert self._send is not None, "open() the manifest first"
        record = _record(result, engine, options_digest, made_as)
        line = json.dumps(record, ensure_ascii=False)
        # a name that is not valid UTF-8 keeps its escapes: \udcxx reads back as it was
        self._send.send_nowait((line + "\n").encode("utf-8", "backslashreplace"))

    def finish(self) -> None:
        """No more records: the writer drains what is queued and ends."""
        if self._send is not None:
            self._send.close()

    async def writer(self, failed: Callable[[StorageError], None]) -> None:
        """Append queued records until :meth:`finish`; each group is fsynced once. When
        cancelled, what is already queued is still written. ``failed`` is called once, on
        the event loop, when the file cannot be written."""
        assert self._receive is not None
        receive = self._receive
        lines: list[bytes] = []  # taken from the queue, not yet on disk
        try:
            async for line in receive:
                lines.append(line)
                while True:
                    try:
                        lines.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                # a cancel may land before the thread starts (e.g. while every worker
                # thread is busy): the group stays in ``lines`` for the finally below
                error = await anyio.to_thread.run_sync(self._append_or_drop, lines)
                lines = []
                if error is not None:
                    failed(error)
        finally:
            while True:
                try:
                    lines.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
            if lines and (error := self._append_or_drop(lines)) is not None:
                failed(error)  # cancelled: written inline rather than lost, if it can be

    def close(self) -> None:
        """Close the file."""
        if self.dropped:
            logger.warning(
                "%d job record(s) could not be written to the manifest at %s (their outputs "
                "are in the sink, where a later run finds them)",
                self.dropped,
                self.path,
            )
            self.dropped = 0
        if self._send is not None:
            self._send.close()
        if self._receive is not None:
            self._receive.close()
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def replayable_sources(spec: object) -> list[str] | None:
    """The sources as strings a later run can open again, or ``None`` when they cannot be
    recorded: bytes, file objects, generators, or URLs carrying credentials or a query
    string (a presigned URL's signature must never reach the manifest)."""
    from ..sources import ImageSource

    items = [spec] if isinstance(spec, (str, os.PathLike, ImageSource)) else spec
    if not isinstance(items, (list, tuple)):
        return None
    out: list[str] = []
    for item in items:
        if isinstance(item, ImageSource):
            if item.kind not in ("path", "url", "s3"):
                return None
            item = item.location
        if not isinstance(item, (str, os.PathLike)):
            return None
        text = os.fspath(item)
        if not isinstance(text, str):  # a path object that gives bytes
            return None
        try:
            if "://" in text:
                parts = urlsplit(text)
                if parts.query or parts.username or parts.password or parts.fragment:
                    return None
            elif text == "-":
                return None
            else:
                text = str(Path(text).resolve())
        except ValueError:  # "http://[::1", a NUL in a path: its job fails; nothing to record
            return None
        out.append(text)
    return out


def load_sources(path: str | os.PathLike[str]) -> list[str]:
    """The sources a manifest's batch recorded, for :meth:`BatchRemover.resume`: those of
    the latest run (a ``retry_failed()`` run does not count).

    Raises:
        ConfigurationError: no such manifest, or its latest run could not record its sources
            (bytes, file objects, generators, signed URLs): pass them to ``resume`` again.
    """
    target = Path(path)
    if not target.exists():
        raise ConfigurationError(f"no manifest at {target}")
    state = read_manifest(target)
    if state.sources is None:
        raise ConfigurationError(
            f"{target} does not record re-openable sources (bytes, file objects, generators "
            "or signed URLs are never written to it): pass the sources to resume() again"
        )
    return state.sources


def file_size(path: str | os.PathLike[str]) -> int:
    """The size of a manifest file (0 if there is none yet)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


async def read_from_sink(sink: Sink, key: str) -> bytes:
    """The manifest a sink keeps under ``key`` (empty when there is none)."""
    try:
        return await sink.get(key)
    except ObjectNotFoundError:
        return b""


def unsent_runs(path: str | os.PathLike[str], earlier: bytes, size: int) -> bytes:
    """The runs of the manifest at ``path`` (its first ``size`` bytes) that the sink's copy
    (``earlier``) does not hold: those of a run that ended before it could store it (a
    kill), whose records of what it made and paid for were otherwise left out of every
    later copy. A run is its header line and the lines after it, and is in the copy when
    its header is."""
    if size == 0:
        return b""
    with open(path, "rb") as handle:
        data = handle.read(size)
    missing: list[bytes] = []
    run: list[bytes] = []
    sent = True  # lines before any header: an older copy's, already there
    for line in data.splitlines(keepends=True):
        if line.startswith(b'{"v": ') and b'"type": "run"' in line:
            if run and not sent:
                missing.extend(run)
            run, sent = [line], line.rstrip(b"\n") in earlier
        else:
            run.append(line)
    if run and not sent:
        missing.extend(run)
    if missing and not missing[-1].endswith(b"\n"):  # a torn last line: left out
        missing.pop()
    return b"".join(missing)


async def upload(
    sink: Sink,
    key: str,
    earlier: bytes,
    path: str | os.PathLike[str],
    offset: int,
    timeout: float = float("inf"),  # noqa: ASYNC109
) -> bool:
    """Store the manifest in the sink: the records already there (``earlier``) plus this
    run's (``path`` from ``offset``), the put given up after ``timeout`` seconds. A refusal
    is logged, not raised; returns whether it was stored."""

    def ours() -> bytes:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read()

    try:
        data = await anyio.to_thread.run_sync(ours)
        with anyio.move_on_after(timeout) as put:
            await sink.put(key, earlier + data, content_type="application/x-ndjson", metadata={})
        if put.cancelled_caught:
            raise StorageError(f"it took more than {timeout:g} s, the store_timeout")
    except Exception as exc:  # a sink of the caller's may raise anything: the run is done
        shown = exc if isinstance(exc, (PhotoroomBGError, OSError)) else repr(exc)
        logger.warning(
            "could not store the manifest as %r in the sink (%s); it is kept at %s",
            key,
            shown,
            path,
        )
        return False
    return True
