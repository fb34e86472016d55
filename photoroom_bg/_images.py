"""Reading inputs and refusing, before any request, what Photoroom would refuse.

A refused image costs nothing: no request is sent. Checks: not empty, under the endpoint's
size cap (50 MB for ``/v1/segment``, 30 MB for ``/v2/edit``), a supported format (PNG, JPEG,
WEBP; HEIC for segment only), decodable, not cut off, and, for ``/v1/segment``, at most
6,000 px on its longest side (``/v2/edit`` documents no pixel limit).
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import warnings
from pathlib import Path
from typing import IO, Any, Literal, Union

from PIL import Image, UnidentifiedImageError

from ._redact import is_url, printable, redact_url
from .errors import InvalidImageError, InvalidSourceError, PhotoroomBGError, SourceNotFoundError

__all__ = [
    "FileTooLarge",
    "ImageInput",
    "NotARegularFile",
    "UnreadableFile",
    "answer_problem",
    "file_kind",
    "file_object_bytes",
    "file_position",
    "load_image",
    "pillow_message",
    "read_file",
    "read_file_object",
    "read_regular_file",
    "sniff_format",
    "validate_image",
]

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]

MB = 1024 * 1024
SIZE_CAPS = {"segment": 50 * MB, "edit": 30 * MB}
MAX_INPUT_BYTES = max(SIZE_CAPS.values())
MAX_SIDE = 6000
# the longest side each endpoint takes: /v2/edit documents none
_MAX_SIDES: dict[str, int | None] = {"segment": MAX_SIDE, "edit": None}
_FORMATS = {"segment": ("png", "jpeg", "webp", "heic"), "edit": ("png", "jpeg", "webp")}
_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "heic": "image/heic"}
Endpoint = Literal["segment", "edit"]
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def sniff_format(data: bytes) -> str | None:
    """Recognise an image by its magic bytes: ``png``, ``jpeg``, ``webp``, ``heic`` or ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"heim"):
        return "heic"
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis"):
        return "avif"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


class NotARegularFile(Exception):
    """The path names a FIFO, device, socket or other non-file: reading it could block forever
    or never end, so it is refused before it is opened for reading."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class FileTooLarge(Exception):
    """The file holds more than the cap: ``size`` bytes as ``stat`` said (``exact``), or at
    least ``size`` when it grew while being read."""

    def __init__(self, size: int, *, exact: bool = True) -> None:
        super().__init__(size)
        self.size = size
        self.exact = exact


def file_kind(mode: int) -> str | None:
    """What a file of ``mode`` is when it is no regular file (``"a FIFO (named pipe)"``,
    ``"a directory"``...); ``None`` for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


class LargerThan(Exception):
    """Raised by :func:`read_regular_file` for a file over its ``large`` size, unread."""


def read_regular_file(
    path: str | os.PathLike[str], max_bytes: int, *, large: int | None = None
) -> bytes:
    """Read a regular file of at most ``max_bytes``, refusing anything else before reading.

    The target (after symlinks) is checked with ``stat`` first, so a FIFO, a device such as
    ``/dev/zero`` or a socket is never opened for reading; the file is then opened without
    blocking and checked again (it may have been swapped in between), and its size is checked
    before a byte is read. Reads at most ``max_bytes + 1`` bytes even if the file grows.

    Raises:
        NotARegularFile: not a regular file (a directory raises :class:`IsADirectoryError`).
        FileTooLarge: larger than ``max_bytes``.
        LargerThan: larger than ``large`` (nothing read: the caller reads it elsewhere).
        OSError: any other failure (``FileNotFoundError``...).
    """
    kind = file_kind(os.stat(path).st_mode)
    if kind == "a directory":
        raise IsADirectoryError(errno.EISDIR, "Is a directory", os.fspath(path))
    if kind is not None:
        raise NotARegularFile(kind)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    try:  # the descriptor itself, not a file object: this runs for every image of a batch
        info = os.fstat(fd)
        kind = file_kind(info.st_mode)
        if kind is not None:
            raise NotARegularFile(kind)
        if info.st_size > max_bytes:
            raise FileTooLarge(info.st_size)
        if large is not None and info.st_size > large:
            raise LargerThan(large)
        limit = max_bytes + 1
        data = os.read(fd, min(info.st_size + 1, limit))  # one read, as a file object's
        if len(data) == info.st_size + 1 and len(data) < limit:  # it grew while we read
            data += os.read(fd, limit - len(data))
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise FileTooLarge(len(data), exact=False)
    return data


class UnreadableFile(Exception):
    """Why :func:`read_file` did not read a file, in words for an error message."""


def read_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """:func:`read_regular_file` for a file named in settings (a key, tokens, a model): a
    FIFO would hold its reader forever, ``/dev/zero`` fill the memory.

    Raises:
        UnreadableFile: it is missing or unreadable, no regular file, or over ``max_bytes``.
    """
    try:
        return read_regular_file(path, max_bytes)
    except NotARegularFile as exc:
        raise UnreadableFile(f"it is {exc}, not a file") from None
    except FileTooLarge:
        raise UnreadableFile(f"it holds over {max_bytes:,} bytes") from None
    except OSError as exc:
        raise UnreadableFile(exc.strerror or str(exc)) from None


def load_image(image: ImageInput, *, max_bytes: int = MAX_INPUT_BYTES) -> tuple[bytes, str]:
    """Read ``image`` (path, bytes or binary file object) into ``(bytes, filename)``.

    A path must name a regular file (FIFOs, devices and sockets are refused before any read)
    and a file or file object may hold at most ``max_bytes`` (Photoroom's largest cap): larger
    inputs are refused without being read into memory. The file name is only a name: the
    format is read from the bytes (see :func:`validate_image`).
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image), "image"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        shown = printable(str(path))
        name = printable(path.name) or "image"
        try:
            data = read_regular_file(path, max_bytes)
        except FileNotFoundError:
            if isinstance(image, str) and is_url(image):  # no file: a URL, made a path
                raise _url_not_path(image) from None
            raise SourceNotFoundError(f"image file not found: {shown}") from None
        except IsADirectoryError:
            raise InvalidImageError(f"{shown} is a directory, not an image file") from None
        except NotARegularFile as exc:
            raise InvalidImageError(
                f"{shown} is {exc.kind}, not an image file: refused without reading it"
            ) from None
        except FileTooLarge as exc:
            raise InvalidImageError(
                _too_large(name, exc.size, max_bytes, "Photoroom", at_least=not exc.exact)
            ) from None
        except OSError as exc:
            raise InvalidImageError(f"cannot read {shown}: {exc.strerror or exc}") from None
        except ValueError as exc:  # a NUL byte or a lone surrogate: no file system takes it
            if isinstance(image, str) and is_url(image):
                raise _url_not_path(image) from None
            problem = printable(str(exc))
            raise InvalidSourceError(f"{shown}: not a usable path ({problem})") from None
        return data, name
    read = getattr(image, "read", None)
    if read is None:
        raise InvalidImageError(
            f"unsupported image input {type(image).__name__}: pass a path, bytes or a binary file"
        )
    name = printable(os.path.basename(str(getattr(image, "name", "") or ""))) or "image"
    position = file_position(image)
    data = file_object_bytes(read_file_object(image, max_bytes + 1, name), position, name)
    if len(data) > max_bytes:
        raise InvalidImageError(_too_large(name, len(data), max_bytes, "Photoroom", at_least=True))
    return data, name


def _url_not_path(url: str) -> InvalidSourceError:
    """The error for a URL given where a path goes, without its credentials or query."""
    return InvalidSourceError(
        f"{printable(redact_url(url))} is a URL, not a path: this call takes a path, bytes or "
        "a binary file; edit() takes an http(s) URL, and a BatchRemover downloads http(s) and "
        "s3:// URLs itself"
    )


def read_file_object(
    image: Any, size: int, name: str, error: type[PhotoroomBGError] = InvalidImageError
) -> object:
    """``image.read(size)``; a closed file object, or a ``read()`` that fails in any way (a
    disk's I/O error, a wrapper of the caller's), is an ``error`` (the client's
    :class:`InvalidImageError`, a batch's :class:`SourceError`) naming ``name``, with the
    failure as its cause."""
    if getattr(image, "closed", False) is True:
        raise error(f"{name}: the file object is closed (its with block ended?): open it again")
    try:
        return image.read(size)
    except OSError as exc:
        raise error(f"{name}: its read() failed: {exc.strerror or exc}") from exc
    except Exception as exc:  # the caller's object may raise anything
        raise error(f"{name}: its read() failed: {type(exc).__name__}: {exc}") from exc


def file_object_bytes(data: object, position: int, name: str) -> bytes:
    """What a file object's ``read()`` gave, read from ``position``: refused when it is text,
    or when it was read from past the start and holds nothing, or no image. (It is read from
    where it stands, as httpx does, so that an image inside a larger file can be sent.)

    Raises:
        InvalidImageError: with a message saying what to do.
    """
    if isinstance(data, str):
        raise InvalidImageError(f"{name}: the file object is in text mode: open it with 'rb'")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidImageError(f"{name}: its read() gave {type(data).__name__}, not bytes")
    if position:
        if not data:
            raise InvalidImageError(
                f"{name}: nothing left to read: the file object was at its end (position "
                f"{position:,}; read already? seek(0) first)"
            )
        if sniff_format(bytes(data[:16])) is None:
            raise InvalidImageError(
                f"{name}: no image begins at position {position:,} of the file object, where "
                "it was read from (read already? seek(0) first)"
            )
    return bytes(data)


def file_position(stream: object) -> int:
    """Where a file object stands (0 when it cannot tell)."""
    try:
        position = stream.tell()  # type: ignore[attr-defined]
    except Exception:  # no tell(), a pipe, a closed or odd object: as if at the start
        return 0
    return position if isinstance(position, int) else 0


def _too_large(name: str, size: int, cap: int, who: str, *, at_least: bool = False) -> str:
    """ "x is 50.3 MB; ... accepts at most 50 MB", in units that show the two differ."""
    shown = f"{size / MB:,.1f} MB"
    if round(size / MB, 1) <= cap / MB:  # rounding would hide the difference
        shown = f"{size:,} bytes"
    more = "more than " if at_least else ""
    return (
        f"{name} is {more}{shown}; {who} accepts at most {cap / MB:g} MB ({cap:,} bytes): "
        "downscale or recompress it first"
    )


def validate_image(data: bytes, endpoint: Endpoint, *, name: str = "image") -> str:
    """Check ``data`` for ``endpoint``; return its MIME type or raise :class:`InvalidImageError`.

    The MIME type comes from the bytes, never from a file name.
    """
    name = printable(name)
    if not data:
        raise InvalidImageError(f"{name} is empty (0 bytes)")
    cap = SIZE_CAPS[endpoint]
    if len(data) > cap:
        raise InvalidImageError(_too_large(name, len(data), cap, f"Photoroom's /{_path(endpoint)}"))
    kind = sniff_format(data)
    allowed = _FORMATS[endpoint]
    if kind not in allowed:
        found = kind.upper() if kind else "not a recognised image"
        raise InvalidImageError(
            f"{name}: {found}; /{_path(endpoint)} accepts {', '.join(a.upper() for a in allowed)}"
            + ("" if kind else _text_hint(data))
        )
    max_side = _MAX_SIDES[endpoint]
    if kind == "jpeg":  # most inputs: their size read without Pillow when plainly laid out
        size = _jpeg_header_size(data)
        if size is None or (max_side is not None and max(size) > max_side):
            _check_pixels(data, name, max_side)  # Pillow's verdict, and its words for it
    elif kind != "heic":  # Pillow cannot read HEIC headers without a plugin
        _check_pixels(data, name, max_side)
    if kind == "jpeg" and not _jpeg_complete(data):
        _check_decodes(data, name)
    return _MIME[kind]


def _text_hint(data: bytes) -> str:
    """For bytes that read as a short line of text (a file name from ``os.fsencode`` or a
    bytes ``glob``, a URL): bytes are the image itself, a name must be a str or a Path."""
    if len(data) > 4096:
        return ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    if not text.isprintable() or not text.strip():
        return ""
    shown = text if len(text) <= 60 else text[:57] + "..."
    return (
        f" (these {len(data):,} bytes read {shown!r}: text, such as an error page saved under "
        "an image's name; or, given as bytes, a name meant as one: bytes are taken as the "
        "image itself, so pass a file name or URL as a str or pathlib.Path)"
    )


# markers of a frame's header (start of frame): all but DHT (C4), JPG (C8) and DAC (CC)
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# segments Pillow parses when it opens a JPEG, and the length below which it fails on them
_JPEG_SHORTEST = ((0xE0, b"JFIF", 7), (0xEE, b"Adobe", 7), (0xE2, b"ICC_PROFILE\0", 14))


def _jpeg_header_size(data: bytes) -> tuple[int, int] | None:
    """The width and height of a JPEG read from its headers, without Pillow, when they are
    plainly laid out up to the first scan: one frame header of 8-bit samples in 1, 3 or 4
    components, whole quantization tables, every segment inside the data. ``None`` for
    anything else (then Pillow judges it). What this accepts, Pillow's header check accepts
    too, with the same size (a test holds it to that); it costs a few microseconds where
    opening the image with Pillow costs about 20."""
    pos, end, size = 2, len(data), None
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker < 0xC0 or 0xD0 <= marker <= 0xD9:
            return None  # no segment: not a plain layout before the first scan
        after = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if after > end or after < pos + 4:
            return None
        if marker == 0xDA:  # start of scan: the headers are read
            return size
        segment = data[pos + 4 : after]
        if marker in _JPEG_FRAMES:
            if size is not None or len(segment) < 6 or segment[0] != 8:
                return None
            if segment[5] not in (1, 3, 4):
                return None
            width, height = int.from_bytes(segment[3:5], "big"), int.from_bytes(segment[1:3], "big")
            if not width or not height:
                return None
            size = (width, height)
        elif marker == 0xDB:  # quantization tables: 64 values of 1 or 2 bytes each
            while segment:
                table = 1 + (64 if segment[0] < 16 else 128)
                if len(segment) < table:
                    return None
                segment = segment[table:]
        elif marker == 0xE2 and segment.startswith(b"MPF\0"):
            return None  # a multi-picture file: Pillow reads its index too
        else:
            for app, tag, shortest in _JPEG_SHORTEST:
                if marker == app and segment.startswith(tag) and len(segment) < shortest:
                    return None
        pos = after
    return None


def _jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG has its end marker after its first scan begins. Pillow's header check
    passes a JPEG cut off anywhere after its headers (a download or a copy that stopped
    short); the end marker is what tells. The headers are walked marker by marker, since a
    thumbnail inside them has a scan and an end marker of its own. An odd layout counts as
    complete: this check only looks for a missing end."""
    pos, size = 2, len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return True  # not a layout this walk knows: leave it to the decoder
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xDA:  # start of scan: the image data runs to the end marker
            return data.rfind(b"\xff\xd9") > pos
        elif marker == 0xD9:
            return True
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False  # the headers themselves are cut off


def answer_problem(data: bytes, content_type: str) -> str | None:
    """What spoils the image of a success answer, or ``None`` when it looks whole: an empty
    body, one that is no image (a proxy's HTML page), or a PNG, JPEG or WEBP whose end is
    missing (cut short on the way, with a Content-Length that matched the cut). Only the
    markers are looked at: nothing is decoded."""
    if not data:
        return "its body is empty"
    kind = sniff_format(data)
    if kind is None:
        return f"its body ({len(data):,} bytes of {content_type[:60]}) is not an image"
    if kind == "png":
        whole = data.rfind(b"IEND", max(0, len(data) - 1024)) >= 0
    elif kind == "jpeg":
        whole = _jpeg_complete(data)
    elif kind == "webp":
        whole = int.from_bytes(data[4:8], "little") + 8 <= len(data)
    else:
        whole = True  # a format Photoroom does not make today: taken as it is
    if whole:
        return None
    return f"its {kind.upper()} stops before its end ({len(data):,} bytes): cut short on the way"


def _check_decodes(data: bytes, name: str) -> None:
    """Decode the whole image (only done for an image that looks cut off)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
    except (OSError, SyntaxError, ValueError):
        raise InvalidImageError(
            f"{name} is truncated: the JPEG stops before the end of its image data, probably "
            "cut off while it was written or downloaded: fetch or export it again"
        ) from None


def pillow_message(exc: BaseException) -> str:
    """Pillow's text without the ``<_io.BytesIO object at 0x...>`` it names its input by."""
    text = _OBJECT_REPR.sub("", str(exc)).strip().rstrip(":").strip()
    return text or type(exc).__name__


def _check_pixels(data: bytes, name: str, max_side: int | None) -> None:
    """Refuse an image Pillow cannot read, or, when ``max_side`` is given, one whose longest
    side is over it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                img.verify()
    except Image.DecompressionBombError:
        if max_side is None:  # no pixel limit: its headers were read, which is all we check
            return
        raise InvalidImageError(
            f"{name} has too many pixels; the longest side may be at most {max_side} px"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"{name} is corrupt or truncated: {pillow_message(exc)}") from None
    if max_side is not None and max(width, height) > max_side:
        raise InvalidImageError(
            f"{name} is {width}x{height} px; the longest side may be at most {max_side} px: "
            "downscale it first"
        )


def _path(endpoint: Endpoint) -> str:
    return "v1/segment" if endpoint == "segment" else "v2/edit"
