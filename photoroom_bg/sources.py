"""Image sources: what a batch reads, expanded lazily and fetched safely.

A source spec is a path, a directory (walked recursively for image files), a glob, ``bytes``,
a binary file object, an ``http(s)://`` URL, an ``s3://bucket/key`` URI (``s3://bucket/prefix/``
lists the images under the prefix), or any iterable or async iterable of these.
:func:`iter_sources` turns a spec into :class:`ImageSource` items one at a time, so a generator
of a million URLs never sits in memory. A :class:`SourceReader` reads one source into bytes:

- Paths must name regular files: FIFOs, devices and sockets (or links to them) are refused
  before anything is read, and the size is checked before reading. Folder and glob listings
  never loop through directory symlinks and stop when their consumer does.
- URLs are fetched through one pooled :class:`httpx.AsyncClient`, guarded against
  server-side request forgery: http/https only; every resolved address checked
  (:class:`~photoroom_bg._netguard.NetworkPolicy`); the connection pinned to the checked
  address; redirects followed by hand (at most ``max_redirects``), each re-checked, even on a
  client of the caller's that follows redirects; the body capped by ``Content-Length``, by the
  bytes received and by the bytes decoded; the first bytes sniffed as an image before the rest
  is downloaded; the whole fetch bounded by a deadline and a minimum transfer rate.
- ``s3://`` objects are read with aiobotocore (the ``s3`` extra), with the same byte cap and
  deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import queue
import re
import threading
import time
import zlib
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import IO, Any, Literal

import anyio
import attrs
import httpx

from . import _loop, _netio, _threads
from ._images import (
    FileTooLarge,
    LargerThan,
    NotARegularFile,
    file_object_bytes,
    file_position,
    read_file_object,
    read_regular_file,
    sniff_format,
)
from ._inflate import UnsupportedEncoding, decoder_for
from ._listing import (
    IMAGE_EXTENSIONS,
    Unlistable,
    glob_base,
    glob_images,
    is_image_path,
    real_path,
    walk_images,
)
from ._netguard import NetworkPolicy, Resolver, default_resolver
from ._numbers import (
    check_callback,
    check_count,
    check_number,
    check_type,
    wait_limit,
)
from ._perloop import PerLoop
from ._pool import tls_context
from ._redact import install_log_redaction, lone_surrogate, printable, redact_text, redact_url
from ._s3client import (
    CREDENTIALS_ADVICE,
    check_endpoint,
    close_s3_client,
    error_code,
    open_s3_client,
)
from .errors import (
    ConfigurationError,
    InvalidImageError,
    InvalidSourceError,
    PhotoroomBGError,
    SourceError,
    SourceNotFoundError,
    SourceTimeoutError,
    SourceTooLargeError,
    UnsafeURLError,
)
from .sinks import parse_s3_uri

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageSource",
    "SourceReader",
    "SourceSpec",
    "UnlistedSource",
    "iter_sources",
]

_IMAGE_KINDS = frozenset({"png", "jpeg", "webp", "heic", "avif", "gif"})
_WALK_CHUNK = 256
_READ_CHUNK = 64 * 1024
_DEFAULT_MAX_BYTES = 50 * 1024 * 1024
#: Connections the reader's main download pool keeps alive (httpx's own default; it allows
#: 100 connections in all, as httpx does).
_KEEP_ALIVE = 20
#: Host names, beyond the first at each address, that get a download pool of their own.
_NAMED_POOLS = 16
#: Connections such a pool keeps alive.
_NAMED_POOL_KEEP_ALIVE = 4

SourceKind = Literal["path", "bytes", "file", "url", "s3"]


@attrs.frozen(repr=False)
class ImageSource:
    """One input image.

    Attributes:
        kind: ``path``, ``bytes``, ``file``, ``url`` or ``s3``.
        location: where it comes from: a path, a URL, an ``s3://`` URI, or a placeholder
            such as ``<bytes #3>`` for in-memory data.
        name: a display name and the stem used for output keys (no directory, no query
            string, no credentials).
        data: the bytes of an in-memory source.
        base: for a relative ``path``, the working folder it was given in (the listing of
            a batch sets it when the batch starts), so that a change of working folder
            while the batch runs (``os.chdir``, a notebook's ``%cd``) does not change which
            file is read; ``None``: the working folder when it is read.
    """

    kind: SourceKind
    location: str
    name: str
    data: bytes | None = attrs.field(default=None, eq=False)
    base: str | None = attrs.field(default=None, eq=False, kw_only=True)

    @property
    def path(self) -> str:
        """Where a ``path`` source is read from: ``location`` under :attr:`base` when it is
        relative."""
        if self.base is None or os.path.isabs(self.location):
            return self.location
        return os.path.join(self.base, self.location)

    @property
    def display(self) -> str:
        """``location`` without query string or credentials: safe to log and store.

        Never raises, whatever the location holds (a malformed URL, a file name that is not
        valid UTF-8: its bytes are shown as ``\\xNN``).
        """
        if self.kind == "url":
            return redact_url(self.location)
        if self.kind == "s3":  # a key may hold "?" or "#": only credentials go
            return printable(_without_credentials(str(self.location)))
        return printable(str(self.location))

    def __repr__(self) -> str:
        return f"ImageSource(kind={self.kind!r}, location={self.display!r})"


@attrs.frozen(repr=False)
class UnlistedSource(ImageSource):
    """An item of a list (or other collection) that could not be turned into sources: an
    ``s3://`` URI without a bucket, ``None``, a file object whose ``read`` fails, a listing
    that broke off. It stands for that one item, so the items after it are still listed;
    reading it raises :attr:`error`, which fails its job alone.

    Attributes:
        error: why the item could not be listed (a
            :class:`~photoroom_bg.errors.SourceError`, or the SDK error met).
    """

    error: PhotoroomBGError = attrs.field(kw_only=True, eq=False)


def _unlisted(item: Any, exc: Exception, listed: int) -> UnlistedSource:
    kind: SourceKind = "file"
    text = f"<{type(item).__name__}>"
    with contextlib.suppress(Exception):  # a PathLike whose __fspath__ fails keeps that
        if isinstance(item, (str, os.PathLike)):
            text = _fs_text(item)
            text = _s3_form(text) or text
            kind = "s3" if text.startswith("s3://") else "url" if _is_uri(text) else "path"
    if isinstance(exc, PhotoroomBGError) and not listed:
        error = exc
    else:
        shown = redact_url(text) if kind == "url" else printable(_without_credentials(text))
        after = f" after {listed} source{'s' if listed != 1 else ''}" if listed else ""
        reason = str(exc) if isinstance(exc, PhotoroomBGError) else f"{type(exc).__name__}: {exc}"
        reason = redact_text(reason)  # a URL in a foreign error keeps no credentials or query
        error = SourceError(f"{shown}: listing it stopped{after}: {reason}")
        error.__cause__ = exc
    return UnlistedSource(kind, text, _stem(text), error=error)


#: One source: a path, folder, glob, URL or ``s3://`` URI, ``bytes``, a binary file object, or
#: an :class:`ImageSource`.
SourceItem = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | ImageSource
#: What ``submit()`` and :func:`iter_sources` accept: a source, or any (async) iterable of
#: sources, nested as deep as you like.
SourceSpec = SourceItem | Iterable["SourceSpec"] | AsyncIterable["SourceSpec"]
SourceSpec.__doc__ = """What ``submit()`` and :func:`iter_sources` accept: a path, folder, glob,
URL, ``s3://`` URI, ``bytes``, binary file object or :class:`ImageSource`, or any (async)
iterable of these, nested as deep as you like. ``submit(42)`` is a type error."""


def _stem(text: str) -> str:
    base = printable(text).rstrip("/").rsplit("/", 1)[-1]
    stem = os.path.splitext(base)[0]
    return stem or "image"


def _url_source(text: str) -> ImageSource:
    try:
        path = httpx.URL(text).path
    except (httpx.InvalidURL, ValueError, TypeError):
        path = redact_url(text).split("://", 1)[-1].partition("/")[2]
    return ImageSource("url", text, _stem(path))


def _path_shape(text: str) -> str:
    if os.path.isdir(text):
        return "dir"
    if _has_magic(text) and not os.path.exists(text):
        return "glob"
    return "path"


def _has_magic(text: str) -> bool:
    return re.search(r"[*?[]", text) is not None


def _fs_text(item: str | os.PathLike[Any]) -> str:
    """The text of a path or URL; a path from ``~`` taken in the home folder, as the sink's
    folder and a shell take it (``os.path.expanduser``: unchanged where no home is known)."""
    path = os.fspath(item)
    text = os.fsdecode(path) if isinstance(path, bytes) else path
    return os.path.expanduser(text) if text.startswith("~") else text


def _s3_form(text: str) -> str | None:
    """``text`` with its scheme in lower case when it is an ``s3://`` URI (``S3://`` too: a
    URI's scheme is case-insensitive, RFC 3986 section 3.1), else ``None``."""
    return "s3://" + text[5:] if text[:5].lower() == "s3://" else None


def _is_uri(text: str) -> bool:
    """An ``s3://`` or other URL, or a ``data:`` URI: anything but a local path."""
    return "://" in text or text.startswith("data:")


def _local_path(item: Any) -> str | None:
    """The text of ``item`` when it names a local path (not a URL or ``s3://`` URI)."""
    if not isinstance(item, (str, os.PathLike)):
        return None
    try:
        text = _fs_text(item)
    except Exception:  # expanding the item fails it, alone
        return None
    return None if _is_uri(text) else text


def _path_shapes(items: Sequence[Any], here: Callable[[str], str]) -> dict[int, str]:
    """:func:`_path_shape` of each local path among ``items`` (each taken ``here``), by
    position: one trip to a worker thread for a whole chunk of a list, not one per path."""
    return {
        i: _path_shape(here(text)) for i, item in enumerate(items) if (text := _local_path(item))
    }


async def _paths_off_loop(
    list_paths: Callable[[threading.Event], Iterator[str | Unlistable]],
    base: str | None = None,
    given: str = "",
    full: str = "",
) -> AsyncIterator[ImageSource]:
    """Pull paths from a blocking lister in chunks, in a worker thread.

    When the consumer stops (cancelled, or done early), the lister is told to stop at its
    next entry, so no thread keeps scanning a huge tree for nobody. A folder it could not
    list becomes an :class:`UnlistedSource` (a failed job) that lists it again when retried.
    A lister of ``full``, the relative folder or glob ``given`` under ``base``, lists paths
    under ``base``: they are shown as under ``given`` again, and read under ``base``.
    """
    stop = threading.Event()
    paths = list_paths(stop)
    cut = len(full) - len(given) if full != given else 0  # "base/", as the paths begin

    def shown(path: str) -> str:
        return path[cut:] if cut and path.startswith(full[:cut]) else path

    def chunk() -> list[str | Unlistable]:
        return [p for _, p in zip(range(_WALK_CHUNK), paths, strict=False)]

    try:
        while True:
            batch = await _threads.run_sync(chunk)
            for path in batch:
                if isinstance(path, Unlistable):
                    found = Unlistable(shown(path.folder), shown(path.spec), path.error)
                    yield _unlistable(found)
                else:
                    path = shown(path)
                    yield ImageSource("path", path, _stem(path), base=_base_of(path, base))
            if len(batch) < _WALK_CHUNK:
                return
    finally:
        stop.set()


_END = object()


async def _pulled_in_a_thread(items: Iterable[Any]) -> AsyncIterator[Any]:
    """The items of a one-shot iterator, each ``next()`` made in a thread of its own, one
    at a time as they are asked for: a generator that waits (for a queue, a cursor, a
    sleep) then holds up neither the event loop every submitted batch shares, nor
    ``cancel()``. Once the consumer stops, the thread ends after the ``next()`` under way
    returns (a daemon: one that never returns does not hold up the interpreter's exit)."""
    iterator = iter(items)
    loop = asyncio.get_running_loop()
    asks: queue.SimpleQueue[asyncio.Future[tuple[Any, BaseException | None]] | None]
    asks = queue.SimpleQueue()

    def answer(
        future: asyncio.Future[tuple[Any, BaseException | None]],
        outcome: tuple[Any, BaseException | None],
    ) -> None:
        if not future.done():
            future.set_result(outcome)

    def pull() -> None:
        while (future := asks.get()) is not None:
            outcome: tuple[Any, BaseException | None]
            try:
                outcome = (next(iterator), None)
            except StopIteration:
                outcome = (_END, None)
            except BaseException as exc:  # sys.exit() in the generator too: the batch's
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody asks
                loop.call_soon_threadsafe(answer, future, outcome)

    threading.Thread(target=pull, name="photoroom-bg-sources", daemon=True).start()
    try:
        while True:
            future: asyncio.Future[tuple[Any, BaseException | None]] = loop.create_future()
            asks.put(future)
            item, error = await future
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        asks.put(None)


def _base_of(path: str, base: str | None) -> str | None:
    """The base a listed or given ``path`` is read under: none for an absolute one."""
    return None if base is None or os.path.isabs(path) else base


def _without_credentials(uri: str) -> str:
    """An ``s3://`` URI without the ``user:secret@`` an ``s3://user:secret@bucket/...`` holds
    (anything else as it is)."""
    if _s3_form(uri) is None:
        return uri
    bucket, slash, key = uri[len("s3://") :].partition("/")
    return f"s3://{bucket.rpartition('@')[2]}{slash}{key}" if "@" in bucket else uri


def _local_under(folder: str | None, text: str) -> str:
    """``text`` under ``folder`` when it is a relative local path; else ``text`` as it is
    (a URL, an ``s3://`` URI, an absolute path, a path from ``~``, or no ``folder``)."""
    if folder is None or _is_uri(text) or text.startswith("~") or os.path.isabs(text):
        return text
    return os.path.join(folder, text)


def _working_folder() -> str | None:
    """The working folder, or ``None`` when it is gone (relative paths then fail as read)."""
    try:
        return os.getcwd()
    except OSError:
        return None


def _unlistable(found: Unlistable) -> UnlistedSource:
    reason = found.error.strerror or f"{type(found.error).__name__}: {found.error}"
    error = SourceError(
        f"{printable(found.folder)}: this folder could not be listed ({reason}), so its "
        "images were left out; mend that and run the batch again (what is stored is skipped)"
    )
    error.__cause__ = found.error
    return UnlistedSource("path", found.spec, _stem(found.spec), error=error)


async def _read_file_object(item: Any, name: str, cap: int) -> bytes:
    position = file_position(item)
    # a byte over the cap is enough to refuse
    data = await _threads.run_sync(read_file_object, item, cap + 1, name, SourceError)
    return file_object_bytes(data, position, name)


async def iter_sources(
    spec: SourceSpec,
    *,
    reader: SourceReader | None = None,
    leave_out: Sequence[str] = (),
    cwd: str | None = None,
) -> AsyncIterator[ImageSource]:
    """Expand ``spec`` into :class:`ImageSource` items, lazily.

    Args:
        spec: a source or an iterable / async iterable of sources (see the module docs).
        reader: used to list ``s3://bucket/prefix/`` URIs (its S3 settings); its ``max_bytes``
            bounds what is read from a file object (one byte more, so the job is refused).
        leave_out: folders and ``s3://bucket/prefix/`` URIs whose contents walks, globs and
            listings leave out: a batch names its output and spill folders, so that a re-run
            never takes the cut-outs of an earlier one for inputs. Naming one of them as a
            folder, glob or prefix to list is an :class:`~photoroom_bg.errors.InvalidSourceError`
            for that item; a file named on its own is still taken.
        cwd: the folder relative paths are taken in (a batch passes the working folder it
            was started in); by default, the working folder when the listing begins. Listed
            and read there, whatever the working folder is by then; shown as given.
    """
    counter = 0
    base = cwd if cwd is not None else _working_folder()

    def here(text: str) -> str:
        """``text``, a local path, under ``base``."""
        return _local_under(base, text)

    cap = reader.max_bytes if reader is not None else _DEFAULT_MAX_BYTES
    s3_out = [parse_s3_uri(_s3_form(uri) or uri) for uri in leave_out if _s3_form(uri)]
    local_out = [path for path in leave_out if not _s3_form(path)]
    folders_out: frozenset[str] | None = None  # real paths, made in a worker thread once

    async def left_out(base: str) -> frozenset[str]:
        """The folders left out; an error if ``base``, the folder to list, is one of them."""
        nonlocal folders_out
        if not local_out:
            return frozenset()
        if folders_out is None:
            folders_out = await _threads.run_sync(lambda: frozenset(map(real_path, local_out)))
        if await _threads.run_sync(real_path, base) in folders_out:
            raise InvalidSourceError(
                f"{printable(base)} is where this batch stores cut-outs (its output or spill "
                "folder): they are not inputs; give the outputs a folder of their own"
            )
        return folders_out

    async def expand(item: Any, shape: str | None = None) -> AsyncIterator[ImageSource]:
        nonlocal counter
        if isinstance(item, ImageSource):
            if item.kind == "path" and item.base is None and _base_of(item.location, base):
                item = attrs.evolve(item, base=base)
            yield item
        elif isinstance(item, (bytes, bytearray, memoryview)):
            counter += 1
            yield ImageSource("bytes", f"<bytes #{counter}>", f"image-{counter}", bytes(item))
        elif isinstance(item, (str, os.PathLike)):
            text = _fs_text(item)
            if not text:  # an unset variable, most often: not "this folder"
                raise InvalidSourceError(
                    "an empty path (an unset variable?): name a file, a folder, a glob or a URL"
                )
            text = _s3_form(text) or text
            if text.startswith("s3://"):  # credentials in it: refused as it is read or listed
                if text.endswith("/"):
                    if reader is None:
                        raise ConfigurationError("listing s3:// prefixes needs a SourceReader")
                    async for source in reader.list_s3(text, leave_out=s3_out):
                        yield source
                else:
                    yield ImageSource("s3", text, _stem(text))
            elif _is_uri(text):
                yield _url_source(text)
            else:
                full = here(text)
                if shape is None:
                    shape = await _threads.run_sync(_path_shape, full)
                if shape == "dir":
                    out = await left_out(full)
                    listed = _paths_off_loop(lambda s: walk_images(full, s, out), base, text, full)
                    async for source in listed:
                        yield source
                elif shape == "glob":
                    out = await left_out(glob_base(full))
                    listed = _paths_off_loop(lambda s: glob_images(full, s, out), base, text, full)
                    async for source in listed:
                        yield source
                else:
                    yield ImageSource("path", text, _stem(text), base=_base_of(text, base))
        elif hasattr(item, "read"):
            counter += 1
            raw_name = getattr(item, "name", "")
            name = printable(raw_name) if isinstance(raw_name, str) and raw_name else ""
            name = name or f"file-{counter}"
            yield ImageSource("file", name, _stem(name), await _read_file_object(item, name, cap))
        elif isinstance(item, AsyncIterable):
            async for inner in item:
                async for source in each(inner):
                    yield source
        elif isinstance(item, Sequence):
            # already in memory: its paths are checked a chunk at a time
            for start in range(0, len(item), _WALK_CHUNK):
                chunk = item[start : start + _WALK_CHUNK]
                shapes: dict[int, str] = {}
                if any(_local_path(inner) is not None for inner in chunk):
                    shapes = await _threads.run_sync(_path_shapes, chunk, here)
                for i, inner in enumerate(chunk):
                    async for source in each(inner, shapes.get(i)):
                        yield source
        elif isinstance(item, Iterable):
            if isinstance(item, Collection) or not _loop.in_background_loop():
                for inner in item:
                    async for source in each(inner):
                        yield source
            else:  # a one-shot iterator on the loop every submitted batch shares
                async for inner in _pulled_in_a_thread(item):
                    async for source in each(inner):
                        yield source
        else:
            raise SourceError(f"not an image source: {type(item).__name__}")

    async def each(item: Any, shape: str | None = None) -> AsyncIterator[ImageSource]:
        """:func:`expand` one item of a collection: what goes wrong with it is that item's
        failure (a source that fails when read), and the items after it are still listed."""
        listed = 0
        try:
            async for source in expand(item, shape):
                listed += 1
                yield source
        except Exception as exc:
            yield _unlisted(item, exc, listed)

    async for source in expand(spec):
        yield source


_HOST_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)\Z", re.IGNORECASE)


#: The arguments botocore's ``create_client`` takes beside the service name.
_S3_CLIENT_ARGUMENTS = frozenset(
    {"region_name", "api_version", "use_ssl", "verify", "endpoint_url", "aws_access_key_id",
     "aws_secret_access_key", "aws_session_token", "config", "aws_account_id"}
)  # fmt: skip
_S3_NAMES = {  # names people write for them (S3Sink's own, for one)
    "region": "region_name",
    "endpoint": "endpoint_url",
    "access_key": "aws_access_key_id",
    "secret_key": "aws_secret_access_key",
    "session_token": "aws_session_token",
}


def _check_s3_options(options: Mapping[str, Any]) -> None:
    """Refuse an ``s3_options`` name the S3 client does not take, when the reader is made:
    it failed each ``s3://`` job instead, as an unexpected TypeError with a traceback."""
    for name in options:
        if name not in _S3_CLIENT_ARGUMENTS:
            hint = _S3_NAMES.get(name) if isinstance(name, str) else None
            raise ConfigurationError(
                f"s3_options: {name!r} is not an argument of the S3 client"
                + (f" (did you mean {hint!r}?)" if hint else "")
                + f"; it takes {', '.join(sorted(_S3_CLIENT_ARGUMENTS))}"
            )


def _check_host(host: str, shown: str) -> None:
    """Refuse host names no resolver should be asked about.

    A name whose last label is a number is an IPv4 address to URL parsers and to
    ``getaddrinfo`` (``2130706433``, ``0x7f.1``, ``127.1``, ``010.0.0.1`` all mean loopback
    there): only the four-decimal form is accepted.
    """
    if ":" in host:  # an IPv6 literal, already validated by the URL parser
        return
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            raise InvalidSourceError(
                f"{shown}: {printable(host)!r} is not a valid IPv4 address (write it as four "
                "decimal numbers, 0-255, without leading zeros)"
            ) from None
        return
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise InvalidSourceError(f"{shown}: {printable(host)!r} is not a valid host name")


class SourceReader:
    """Reads :class:`ImageSource` items into bytes, safely and with a byte cap.

    Args:
        max_bytes: the largest source accepted (default 50 MB, Photoroom's own cap); counts
            decoded bytes, so a compressed body cannot expand past it.
        allow_private_networks: let URLs reach non-public addresses (loopback, private,
            link-local, CGNAT, reserved). Cloud metadata addresses stay refused unless listed
            in ``allow_networks``.
        allow_networks: networks allowed although not public (e.g. ``["10.1.2.0/24"]``).
        max_redirects: redirects followed, each re-checked (default 5).
        timeout: seconds to connect, and between two reads, per HTTP request.
        deadline: seconds for one whole fetch, redirects and body included (default 60;
            ``None`` for none); applies to ``s3://`` objects too.
        min_transfer_rate: bytes per second a body must average once ``transfer_grace``
            seconds have passed (default 4096; ``0`` turns the check off).
        transfer_grace: seconds a body may take before the minimum rate applies (default 10).
        resolver: ``async (host, port) -> [addresses]``; defaults to the system resolver.
        s3_options: keyword arguments for the S3 client (``endpoint_url``, ``region_name``,
            ``aws_access_key_id``, ``aws_secret_access_key``...) used for ``s3://`` sources.
        http_client: an :class:`httpx.AsyncClient` to use (not closed by :meth:`aclose`); the
            reader still follows redirects itself, whatever the client's ``follow_redirects``.
    """

    def __init__(
        self,
        *,
        max_bytes: int = _DEFAULT_MAX_BYTES,
        allow_private_networks: bool = False,
        allow_networks: Iterable[str] = (),
        max_redirects: int = 5,
        timeout: float = 30.0,
        deadline: float | None = 60.0,
        min_transfer_rate: float = 4096.0,
        transfer_grace: float = 10.0,
        resolver: Resolver | None = None,
        s3_options: Mapping[str, Any] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        check_count("max_bytes", max_bytes, 1)
        check_count("max_redirects", max_redirects, 0)
        check_number("timeout", timeout, positive=True)  # inf: none (below)
        if deadline is not None:
            check_number("deadline", deadline, positive=True)
        # inf would make every transfer too slow; an infinite grace turns the check off
        check_number("min_transfer_rate", min_transfer_rate, finite=True)
        check_number("transfer_grace", transfer_grace)
        check_callback("resolver", resolver)
        check_type("s3_options", s3_options, Mapping, "a mapping or None")
        check_type("http_client", http_client, httpx.AsyncClient, "an httpx.AsyncClient or None")
        check_endpoint("s3_options['endpoint_url']", (s3_options or {}).get("endpoint_url"))
        _check_s3_options(s3_options or {})
        self.max_bytes = max_bytes
        self.policy = NetworkPolicy(allow_private_networks, allow_networks)
        self.max_redirects = max_redirects
        self.deadline = deadline
        self.min_transfer_rate = min_transfer_rate
        self.transfer_grace = transfer_grace
        self._resolve = resolver or default_resolver
        self._s3_options = dict(s3_options or {})
        self._timeout = timeout
        # pools and S3 clients belong to one event loop each: see photoroom_bg._perloop
        self._s3_clients: PerLoop[tuple[Any, Any]] = PerLoop(self._open_s3, close_s3_client)
        self._given_http = http_client
        self._https: PerLoop[_Pools] = PerLoop(self._open_pools, _Pools.aclose)
        self._quick_reads = _threads.QuickCalls("reads of local files")
        install_log_redaction()

    @property
    def s3_endpoint(self) -> str | None:
        """The S3-compatible server ``s3://`` sources are read from (``None``: AWS)."""
        endpoint = self._s3_options.get("endpoint_url")
        return str(endpoint) if endpoint is not None else None

    def __repr__(self) -> str:
        return (
            f"SourceReader(max_bytes={self.max_bytes}, policy={self.policy!r}, "
            f"deadline={self.deadline!r}, s3_endpoint={self._s3_options.get('endpoint_url')!r})"
        )

    async def read(self, source: ImageSource) -> bytes:
        """Return the bytes of ``source``; raise a :class:`~photoroom_bg.errors.SourceError`."""
        if isinstance(source, UnlistedSource):
            raise source.error
        if source.data is not None:
            self._check_size(len(source.data), source)
            return source.data
        if source.kind == "path":
            if not self._quick_reads.threaded:  # a small file in place while reads are quick
                with contextlib.suppress(LargerThan):  # a large one goes to a thread
                    return await self._quick_reads.run(
                        self._read_path, source, _threads.QUICK_BYTES
                    )
            return await _threads.run_sync(self._read_path, source)
        if source.kind == "url":
            return await self._within_deadline(self._fetch(source), source)
        if source.kind == "s3":
            return await self._within_deadline(self._read_s3(source), source)
        raise SourceError(f"{source.display}: nothing to read")

    async def _within_deadline(self, work: Any, source: ImageSource) -> bytes:
        try:
            with anyio.fail_after(self.deadline):
                result: bytes = await work
                return result
        except TimeoutError:
            raise SourceTimeoutError(
                f"{source.display}: not fetched within the {self.deadline:g} s deadline"
            ) from None

    def _check_size(self, size: int, source: ImageSource, *, at_least: bool = False) -> None:
        if size > self.max_bytes:
            more = "more than " if at_least else ""
            raise SourceTooLargeError(
                f"{source.display} is {more}{size:,} bytes; the limit is {self.max_bytes:,}"
            )

    def _read_path(self, source: ImageSource, large: int | None = None) -> bytes:
        try:
            return read_regular_file(source.path, self.max_bytes, large=large)
        except FileNotFoundError:
            raise SourceNotFoundError(f"{source.display}: no such file") from None
        except IsADirectoryError:
            raise SourceError(f"{source.display} is a directory") from None
        except NotARegularFile as exc:
            raise InvalidSourceError(
                f"{source.display} is {exc.kind}, not a file: refused without reading it"
            ) from None
        except FileTooLarge as exc:
            self._check_size(exc.size, source, at_least=not exc.exact)
            raise AssertionError("unreachable: the size is over the cap") from None
        except OSError as exc:
            raise SourceError(f"{source.display}: {exc.strerror or exc}") from None
        except ValueError as exc:  # a NUL byte: no file system takes the path
            raise InvalidSourceError(f"{source.display}: not a usable path ({exc})") from None

    async def _fetch(self, source: ImageSource) -> bytes:
        url = source.location
        for _ in range(self.max_redirects + 1):
            parsed = self._parse(url, source)
            async with contextlib.AsyncExitStack() as closing:  # a one-off pool, if any
                response = await self._send_pinned(parsed, source, closing)
                try:
                    if response.is_redirect:
                        url = self._redirect_target(parsed, response, source)
                        continue
                    return await self._read_body(response, source)
                finally:
                    with anyio.CancelScope(shield=True):
                        await response.aclose()
        raise SourceError(f"{source.display}: more than {self.max_redirects} redirects")

    @staticmethod
    def _redirect_target(url: httpx.URL, response: httpx.Response, source: ImageSource) -> str:
        location = response.headers.get("location")
        if not location:
            raise SourceError(f"{source.display}: redirect without a Location")
        try:
            return str(url.join(location))
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise InvalidSourceError(
                f"{source.display}: redirected to a malformed URL ({redact_text(str(exc))})"
            ) from None

    @staticmethod
    def _parse(url: str, source: ImageSource) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError, TypeError) as exc:
            raise InvalidSourceError(
                f"{source.display}: not a valid URL ({redact_text(str(exc))})"
            ) from None
        if parsed.scheme not in ("http", "https"):
            raise UnsafeURLError(
                f"{source.display}: only http and https URLs are fetched, not "
                f"{parsed.scheme or 'this'}:"
            )
        try:  # the host decoded from IDNA: "xn--a" is no punycode (idna's UnicodeError)
            host = parsed.host
        except (UnicodeError, ValueError):
            raise InvalidSourceError(
                f"{source.display}: {printable(parsed.raw_host.decode('ascii', 'replace'))!r} "
                "is not a valid host name"
            ) from None
        if not host:
            raise InvalidSourceError(f"{source.display}: URL has no host")
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise InvalidSourceError(f"{source.display}: port {parsed.port} is out of range")
        _check_host(host, source.display)
        return parsed

    async def _send_pinned(
        self, url: httpx.URL, source: ImageSource, closing: contextlib.AsyncExitStack
    ) -> httpx.Response:
        port = url.port or (443 if url.scheme == "https" else 80)
        # "10.0.0.1." is checked as the address it is: the resolver would take it for a
        # name, and ask a DNS server about it
        literal = url.host[:-1] if url.host.endswith(".") else url.host
        lookup = literal if _netio.is_address(literal) else url.host
        try:
            addresses = await self._resolve(lookup, port)
        except (OSError, UnicodeError) as exc:
            raise SourceError(f"{source.display}: cannot resolve {url.host} ({exc})") from None
        if not addresses:
            raise SourceError(f"{source.display}: {url.host} has no address")
        checked = [self.policy.check(a, host=url.host) for a in addresses]  # all must pass
        pinned = url.copy_with(host=str(checked[0]))
        host_header = url.host if url.port is None else f"{url.host}:{url.port}"
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        if self._given_http is not None:
            http = self._given_http
        else:
            pools = await self._https.get()
            http = pools.main
            if url.scheme == "https":
                http = pools.pool_for(pinned.host, port, url.host, closing)
        request = http.build_request(
            "GET",
            pinned,
            headers={"host": host_header, "accept": "image/*", "accept-encoding": "identity"},
            extensions=extensions,
        )
        try:
            # follow_redirects=False per request: a client of the caller's may follow them
            return await http.send(request, stream=True, follow_redirects=False)
        except httpx.TimeoutException as exc:
            raise self._timed_out(exc, source) from None
        except httpx.RemoteProtocolError as exc:
            if "location header" in str(exc).lower():  # httpx parses a redirect's target
                raise InvalidSourceError(
                    f"{source.display}: redirected to a malformed URL ({redact_text(str(exc))})"
                ) from None
            raise SourceError(f"{source.display}: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            raise SourceError(f"{source.display}: {type(exc).__name__}") from None
        except (UnicodeError, httpx.InvalidURL) as exc:
            # httpx reads a redirect's target as it answers: "xn--a", "http:10.0.0.1/x.png"
            raise InvalidSourceError(
                f"{source.display}: redirected to a malformed URL ({redact_text(str(exc))})"
            ) from None

    async def _read_body(self, response: httpx.Response, source: ImageSource) -> bytes:
        if response.status_code == 404:
            raise SourceNotFoundError(f"{source.display}: 404 Not Found")
        if response.status_code >= 400:
            raise SourceError(f"{source.display}: HTTP {response.status_code}")
        declared = response.headers.get("content-length", "").strip()
        if declared.isdigit():
            self._check_size(int(declared), source)
        try:
            decoder = decoder_for(response.headers.get("content-encoding"))
        except UnsupportedEncoding as exc:
            raise SourceError(f"{source.display}: unsupported Content-Encoding {exc}") from None
        body = bytearray()
        received = 0
        sniffed = False
        started = time.monotonic()
        chunks = response.aiter_raw()  # raw: decoded here, within the cap (see _inflate)
        try:
            while (chunk := await self._next_chunk(chunks, started, received, source)) is not None:
                received += len(chunk)
                self._check_size(received, source, at_least=True)
                room = self.max_bytes + 1 - len(body)  # a byte over the cap is enough to refuse
                body += decoder.feed(chunk, room) if decoder is not None else chunk
                self._check_size(len(body), source, at_least=decoder is not None)
                if not sniffed and len(body) >= 16:
                    self._sniff(bytes(body[:32]), source)
                    sniffed = True
            if decoder is not None:
                body += decoder.flush(self.max_bytes + 1 - len(body))
                self._check_size(len(body), source, at_least=True)
        except httpx.TimeoutException as exc:
            raise self._timed_out(exc, source) from None
        except httpx.HTTPError as exc:
            raise SourceError(f"{source.display}: download failed ({type(exc).__name__})") from None
        except zlib.error:
            encoding = decoder.encoding if decoder is not None else "compressed"
            raise SourceError(f"{source.display}: the {encoding} body is corrupt") from None
        finally:
            with anyio.CancelScope(shield=True):
                await chunks.aclose()  # type: ignore[attr-defined]
        self._sniff(bytes(body[:32]), source)
        return bytes(body)

    async def _next_chunk(
        self, chunks: AsyncIterator[bytes], started: float, received: int, source: ImageSource
    ) -> bytes | None:
        """The next piece of the body, or ``None`` at its end; too slow a body is refused.

        The wait for each piece ends when the body would fall below the minimum rate, so a
        server sending a byte now and then cannot hold a job forever.
        """
        wait: float | None = None
        if self.min_transfer_rate > 0:
            due = started + self.transfer_grace + received / self.min_transfer_rate
            wait = due - time.monotonic()
            if wait <= 0:
                raise self._too_slow(started, received, source)
        try:
            with anyio.fail_after(wait):
                return await chunks.__anext__()
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise self._too_slow(started, received, source) from None

    def _timed_out(self, exc: httpx.TimeoutException, source: ImageSource) -> SourceTimeoutError:
        """The ``timeout`` setting ran out: to connect, or waiting for the answer or its body."""
        connecting = isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout))
        return SourceTimeoutError(
            f"{source.display}: timed out: no {'connection' if connecting else 'data'} within "
            f"the {self._timeout:g} s timeout ({type(exc).__name__})"
        )

    def _too_slow(self, started: float, received: int, source: ImageSource) -> SourceTimeoutError:
        elapsed = time.monotonic() - started
        return SourceTimeoutError(
            f"{source.display}: too slow ({received:,} bytes in {elapsed:.1f} s; at least "
            f"{self.min_transfer_rate:,.0f} bytes/s is required after the first "
            f"{self.transfer_grace:g} s)"
        )

    @staticmethod
    def _sniff(head: bytes, source: ImageSource) -> None:
        if not head:
            raise InvalidImageError(f"{source.display}: empty body")
        if sniff_format(head) not in _IMAGE_KINDS:
            raise InvalidImageError(f"{source.display}: the content is not an image")

    async def _s3(self) -> Any:
        return (await self._s3_clients.get())[1]

    async def _open_s3(self) -> tuple[Any, Any]:
        options = dict(self._s3_options)
        # a botocore Config of the caller's is used as given (it was also passed twice,
        # and every s3:// job failed with a TypeError)
        config = options.pop("config", None)
        if config is None and options.get("endpoint_url"):
            config = {"s3": {"addressing_style": "path"}}
        return await open_s3_client("s3:// sources need", config, **options)

    def _http_client(self, keep_alive: int = _KEEP_ALIVE) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(
            verify=tls_context(trust_env=False),  # made once per process, not per reader
            trust_env=False,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=keep_alive),
        )
        _netio.install(transport)  # no proxy here: asyncio's own transports (see _netio)
        return httpx.AsyncClient(
            timeout=httpx.Timeout(wait_limit("timeout", self._timeout)),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )

    async def _open_pools(self) -> _Pools:
        return _Pools(self._http_client)

    @staticmethod
    def _split_s3(uri: str, shown: str) -> tuple[str, str]:
        bucket, _, key = (_s3_form(uri) or uri)[len("s3://") :].partition("/")
        if "@" in bucket:
            raise InvalidSourceError(
                f"{shown}: an s3:// URI takes no credentials: {CREDENTIALS_ADVICE}"
            )
        if not bucket:
            raise InvalidSourceError(f"{shown}: an s3:// URI names a bucket")
        at = lone_surrogate(uri)  # S3 names are UTF-8: botocore's own encoding raised on it
        if at is not None:
            raise InvalidSourceError(
                f"{shown}: not text (a lone surrogate at position {at}, from a name that was "
                "not UTF-8?): S3 keys and buckets are UTF-8"
            )
        return bucket, key

    async def _read_s3(self, source: ImageSource) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = self._split_s3(source.location, source.display)
        if not key:
            raise InvalidSourceError(f"{source.display}: names no object")
        client = await self._s3()
        body = bytearray()
        try:
            response = await client.get_object(Bucket=bucket, Key=key)
            async with response["Body"] as stream:  # closed on every way out, refusals too
                self._check_size(int(response.get("ContentLength") or 0), source)
                sniffed = False
                while chunk := await stream.read(_READ_CHUNK):
                    body += chunk
                    self._check_size(len(body), source, at_least=True)
                    if not sniffed and len(body) >= 16:
                        self._sniff(bytes(body[:32]), source)
                        sniffed = True
        except (ClientError, BotoCoreError) as exc:
            raise _s3_error(exc, source.display, "no such object") from None
        self._sniff(bytes(body[:32]), source)
        return bytes(body)

    async def list_s3(
        self, prefix_uri: str, *, leave_out: Sequence[tuple[str, str]] = ()
    ) -> AsyncIterator[ImageSource]:
        """Yield the image objects under ``s3://bucket/prefix/``, page by page, but none
        under a ``(bucket, prefix)`` of ``leave_out`` (a batch's outputs) inside it.

        Raises:
            InvalidSourceError: the prefix to list is one of ``leave_out``, or inside it.
        """
        shown = redact_url(prefix_uri)
        bucket, prefix = self._split_s3(prefix_uri, shown)
        inside = [p for b, p in leave_out if b == bucket and p.startswith(prefix)]
        # an output at the bucket's root ("") holds every prefix of it: listed, its cut-outs
        # were inputs of the next run, which paid for cut-outs of them
        if any(prefix.startswith(p) for b, p in leave_out if b == bucket):
            raise InvalidSourceError(
                f"{shown} is where this batch stores cut-outs: they are not inputs; give the "
                "outputs a prefix of their own"
            )
        from botocore.exceptions import BotoCoreError, ClientError

        client = await self._s3()
        paginator = client.get_paginator("list_objects_v2")
        pages = aiter(paginator.paginate(Bucket=bucket, Prefix=prefix))
        while True:
            try:
                page = await anext(pages)
            except StopAsyncIteration:
                return
            except (ClientError, BotoCoreError) as exc:
                raise _s3_error(exc, shown, "no such bucket") from None
            for item in page.get("Contents", []):
                key = str(item["Key"])
                if is_image_path(key) and not key.startswith(tuple(inside)):
                    yield ImageSource("s3", f"s3://{bucket}/{key}", _stem(key))

    async def aclose(self) -> None:
        """Close the HTTP pools and S3 clients it made (not a ``http_client`` passed in)."""
        await self._https.aclose()
        await self._s3_clients.aclose()

    async def __aenter__(self) -> SourceReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _s3_error(exc: Exception, shown: str, missing: str) -> SourceError:
    """The error of an S3 read or listing of ``shown`` that botocore failed with ``exc``
    (``missing``: what a 404 means there)."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            return SourceNotFoundError(f"{shown}: {missing}")
        return SourceError(f"{shown}: S3 error {code}")
    # its message says why (a bucket name, the endpoint)
    detail = redact_text(printable(" ".join(str(exc).split())))[:300]
    return SourceError(f"{shown}: {type(exc).__name__}: {detail}")


class _Pools:
    """The reader's download pools on one event loop.

    A download goes to the address its host name was checked to resolve to, so a pool knows
    its connections by address; a connection made, and verified, for one name there would
    carry another name's requests too, its server never checked to answer for that name.
    So the first name to reach an (address, port) shares :attr:`main`'s connections to it;
    any other name there gets a pool of its own, up to ``_NAMED_POOLS`` of them, and beyond
    that a connection of its own for each download. Plain ``http`` verifies no one: it all
    goes through :attr:`main`.
    """

    def __init__(self, make: Callable[[int], httpx.AsyncClient]) -> None:
        self.main = make(_KEEP_ALIVE)
        self._make = make
        self._owners: dict[tuple[str, int], str] = {}  # (address, port) -> host name
        self._named: dict[str, httpx.AsyncClient] = {}

    def pool_for(
        self, address: str, port: int, name: str, closing: contextlib.AsyncExitStack
    ) -> httpx.AsyncClient:
        """The pool for an ``https`` download of ``name`` from ``address``; a one-off pool
        is closed (even when cancelled) as ``closing`` ends."""
        if self._owners.setdefault((address, port), name) == name:
            return self.main
        pool = self._named.get(name)
        if pool is not None:
            return pool
        if len(self._named) < _NAMED_POOLS:
            pool = self._named[name] = self._make(_NAMED_POOL_KEEP_ALIVE)
            return pool
        one_off = self._make(0)

        async def close() -> None:
            with anyio.CancelScope(shield=True):
                await one_off.aclose()

        closing.push_async_callback(close)
        return one_off

    async def aclose(self) -> None:
        """Close every pool (all of them, even if closing one fails)."""
        async with contextlib.AsyncExitStack() as stack:
            for pool in (self.main, *self._named.values()):
                stack.push_async_callback(pool.aclose)
