"""What the ``photoroom-bg`` command checks before it creates or bills anything.

Each check raises :class:`ValueError` with a one-line message naming the path (control
characters escaped), or returns what the command needs to know. None of them writes to disk:
writability is probed with an anonymous temporary file that never gets a name.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import math
import os
import tempfile
import unicodedata
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import click
import httpx

from . import _loop
from ._images import file_kind
from ._redact import redact_text, redact_url
from .batch._manifest import manifest_in_use
from .sinks._common import try_lock
from .sources import iter_sources

__all__ = [
    "check_destination",
    "check_inputs",
    "check_manifest",
    "check_not_an_input",
    "printable",
]

# control characters, bidi and zero-width formatting, line and paragraph separators,
# surrogates (undecodable bytes of a file name) and unassigned code points
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def printable(text: str) -> str:
    """``text`` with every character that could move the cursor, rewrite the terminal or
    reorder the line shown as a Python escape (``\\x1b``, ``\\n``, ``\\u202e``)."""
    if text.isprintable():  # the common case: nothing to escape (spaces are printable)
        return text
    return "".join(
        char.encode("unicode_escape", "backslashreplace").decode("ascii")
        if unicodedata.category(char) in _UNPRINTABLE
        else char
        for char in text
    )


def _is_remote(item: str) -> bool:
    return "://" in item or item.startswith("data:")


async def _has_images(item: str) -> bool:
    """Whether ``item`` lists at least one image, read as the batch would read it."""
    sources = cast("AsyncGenerator[object, None]", iter_sources(item))
    async with contextlib.aclosing(sources):  # stop the folder walk at the first image
        async for _ in sources:
            return True
    return False


def check_inputs(items: Sequence[str]) -> list[str]:
    """Refuse local paths that do not exist; return the folders and globs with no image.

    URLs, ``s3://`` URIs and ``-`` (stdin) are left to the batch: checking them needs the
    network or consumes them.
    """
    empty = []
    for item in items:
        if not item:
            raise ValueError("an empty path (an unset variable?): name a file, a folder or a glob")
        if item == "-":
            continue
        if _is_remote(item):
            _check_url(item)
            continue
        if os.path.isdir(item) or (glob.has_magic(item) and not os.path.lexists(item)):
            if not _loop.run_sync(_has_images(item)):
                empty.append(item)
        elif not os.path.exists(item):
            if os.path.islink(item):  # the name is there: say why it leads nowhere
                raise ValueError(f"{printable(item)} is a symlink to nothing: {_dangling(item)}")
            raise ValueError(f"no such file or folder: {printable(item)}")
        elif not os.path.isfile(item):  # named here, so no job of a batch: a setup error
            kind = file_kind(os.stat(item).st_mode)
            raise ValueError(f"{printable(item)} is {kind}, not an image file")
    return empty


def _check_url(item: str) -> None:
    """An http(s) URL no request can be made of (``http://[::1``) is refused as a missing
    file is, before anything is created."""
    if not item.lower().startswith(("http://", "https://")):
        return
    try:
        host = httpx.URL(item).host
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise ValueError(
            f"{redact_url(item)} is not a valid URL ({redact_text(str(exc))})"
        ) from None
    if not host:  # "http://", "https:///x.jpg": no server to ask
        raise ValueError(f"{redact_url(item)} is not a valid URL (it names no host)")


def check_not_an_input(dest: str, items: Sequence[str]) -> None:
    """The output folder is none of the input folders: its cut-outs, and the manifest the
    command keeps there, would be among the photos."""
    path = _local_path(dest)
    if path is None or not path.is_dir():
        return
    folders = [i for i in items if i and i != "-" and not _is_remote(i) and os.path.isdir(i)]
    if any(os.path.samefile(folder, path) for folder in folders):
        raise ValueError(
            f"the output folder {printable(dest)} is also an input: its cut-outs would be "
            "read as photos; write them to another folder"
        )


def _local_path(dest: str) -> Path | None:
    if dest.startswith("file://"):
        return Path(unquote(urlsplit(dest).path))
    if _is_remote(dest):
        return None
    return Path(dest).expanduser()


def _existing_ancestor(path: Path) -> Path:
    for candidate in path.absolute().parents:
        if candidate.exists():
            return candidate
    return Path(path.absolute().anchor)  # pragma: no cover - the root always exists


def _probe_writable(folder: Path, failure: str) -> None:
    """Create and drop an unnamed file in ``folder`` (O_TMPFILE where the OS has it)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(f"{failure}: {exc.strerror or exc}") from None


def _check_creatable(path: Path, what: str) -> None:
    """``path`` does not exist; its nearest existing ancestor is a folder we can write."""
    shown = printable(str(path))
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise ValueError(f"cannot create {what} {shown}: {printable(str(ancestor))} is a file")
    _probe_writable(ancestor, f"cannot create {what} {shown} in {printable(str(ancestor))}")


def check_destination(dest: str) -> None:
    """A folder destination exists as a writable folder, or can be created; ``s3://`` and
    other remote destinations are checked by the batch."""
    path = _local_path(dest)
    if path is None:
        return
    shown = printable(str(path))
    if not path.exists():
        _check_creatable(path, "output folder")
    elif not path.is_dir():
        raise ValueError(f"output folder {shown} is a file, not a folder")
    else:
        _probe_writable(path, f"cannot write to output folder {shown}")


def check_manifest(manifest: str) -> None:
    """The manifest file can be appended to, or created."""
    path = Path(manifest).expanduser()
    shown = printable(manifest)
    if not path.exists():
        _check_creatable(path, "manifest")
    elif path.is_dir():
        raise ValueError(f"manifest {shown} is a folder, not a file")
    elif not path.is_file():  # a FIFO holds the open below forever; /dev/zero reads forever
        raise ValueError(f"manifest {shown} is {file_kind(path.stat().st_mode)}, not a file")
    else:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise ValueError(f"cannot write to manifest {shown}: {exc.strerror or exc}") from None
        try:
            if try_lock(fd) is False:  # the batch checks again when it opens the manifest
                raise ValueError(manifest_in_use(shown))
        finally:
            os.close(fd)


def _dangling(link: str) -> str:
    """Why the symlink ``link`` leads nowhere: a loop, or the missing path it names."""
    try:
        os.stat(link)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "it loops back on itself"
    try:
        return f"{printable(os.readlink(link))} does not exist"
    except OSError as exc:
        return exc.strerror or str(exc)


class Number(click.FloatRange):
    """:class:`click.FloatRange` that also refuses ``nan``, which compares false with every
    bound and so got past the range check, to be refused later under the SDK's name for the
    setting instead of the option's."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if isinstance(number, float) and math.isnan(number):
            self.fail(f"{value!r} is not a number.", param, ctx)
        return number
