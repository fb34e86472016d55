"""Reading inputs and refusing, before any request, what Photoroom would refuse.

A refused image costs nothing: no request is sent. Checks: not empty, under the endpoint's
size cap (50 MB for ``/v1/segment``, 30 MB for ``/v2/edit``), a supported format (PNG, JPEG,
WEBP; HEIC for segment only), decodable, and at most 6,000 px on its longest side.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import IO, Literal, Union

from PIL import Image, UnidentifiedImageError

from .errors import InvalidImageError, SourceNotFoundError

__all__ = ["ImageInput", "load_image", "sniff_format", "validate_image"]

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]

MB = 1024 * 1024
SIZE_CAPS = {"segment": 50 * MB, "edit": 30 * MB}
MAX_SIDE = 6000
_FORMATS = {"segment": ("png", "jpeg", "webp", "heic"), "edit": ("png", "jpeg", "webp")}
_MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "heic": "image/heic"}
Endpoint = Literal["segment", "edit"]


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


def load_image(image: ImageInput) -> tuple[bytes, str]:
    """Read ``image`` (path, bytes or binary file object) into ``(bytes, filename)``."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image), "image"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            return path.read_bytes(), path.name
        except FileNotFoundError:
            raise SourceNotFoundError(f"image file not found: {path}") from None
        except IsADirectoryError:
            raise InvalidImageError(f"{path} is a directory, not an image file") from None
        except OSError as exc:
            raise InvalidImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    read = getattr(image, "read", None)
    if read is None:
        raise InvalidImageError(
            f"unsupported image input {type(image).__name__}: pass a path, bytes or a binary file"
        )
    data = read()
    if isinstance(data, str):
        raise InvalidImageError("the file object is in text mode: open it with 'rb'")
    name = os.path.basename(str(getattr(image, "name", "image")))
    return bytes(data), name or "image"


def validate_image(data: bytes, endpoint: Endpoint, *, name: str = "image") -> str:
    """Check ``data`` for ``endpoint``; return its MIME type or raise :class:`InvalidImageError`."""
    if not data:
        raise InvalidImageError(f"{name} is empty (0 bytes)")
    cap = SIZE_CAPS[endpoint]
    if len(data) > cap:
        raise InvalidImageError(
            f"{name} is {len(data) / MB:.1f} MB; Photoroom's /{_path(endpoint)} accepts at most "
            f"{cap // MB} MB: downscale or recompress it first"
        )
    kind = sniff_format(data)
    allowed = _FORMATS[endpoint]
    if kind not in allowed:
        found = kind.upper() if kind else "not a recognised image"
        raise InvalidImageError(
            f"{name}: {found}; /{_path(endpoint)} accepts {', '.join(a.upper() for a in allowed)}"
        )
    if kind != "heic":  # Pillow cannot read HEIC headers without a plugin
        _check_pixels(data, name)
    return _MIME[kind]


def _check_pixels(data: bytes, name: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                img.verify()
    except Image.DecompressionBombError:
        raise InvalidImageError(
            f"{name} has too many pixels; the longest side may be at most {MAX_SIDE} px"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"{name} is corrupt or truncated: {exc}") from None
    if max(width, height) > MAX_SIDE:
        raise InvalidImageError(
            f"{name} is {width}x{height} px; the longest side may be at most {MAX_SIDE} px: "
            "downscale it first"
        )


def _path(endpoint: Endpoint) -> str:
    return "v1/segment" if endpoint == "segment" else "v2/edit"
