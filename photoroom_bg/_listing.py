"""Listing image files under folders and globs: no loops, no special files, stoppable.

Directory symlinks are followed, but a directory is entered at most once per walk (by its
``(st_dev, st_ino)``), so a link such as ``a -> .`` or ``a -> ..`` cannot make a walk loop or
list a file twice. Only regular files (after symlinks) are listed, so a FIFO or a link to
``/dev/zero`` named ``x.png`` is never handed on. A folder that cannot be listed (no
permission, an I/O error) is handed on as an :class:`Unlistable`, so that its images are
accounted for, not left out silently. A folder below the one walked that holds
:data:`OUTPUT_MARKER` (the manifest ``photoroom-bg remove`` keeps beside its cut-outs) is an
earlier batch's output, and is not walked into: its cut-outs are no photos. The walkers run
in a worker thread and check a :class:`threading.Event` between entries: setting it stops
them promptly.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

__all__ = [
    "IMAGE_EXTENSIONS",
    "OUTPUT_MARKER",
    "Unlistable",
    "glob_base",
    "glob_images",
    "is_image_path",
    "real_path",
    "walk_images",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".heic", ".heif"})

#: The file that marks a folder as a batch's output: the manifest the command keeps there.
OUTPUT_MARKER = ".photoroom-bg-manifest.jsonl"

Identity = tuple[int, int]


def is_image_path(path: str) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


class Unlistable(NamedTuple):
    """A folder a walk met but could not list."""

    #: the folder
    folder: str
    #: what lists the images it holds: the folder, or the rest of the glob under it
    spec: str
    #: why it could not be listed
    error: OSError


def _scandir(folder: str) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` sorted by name; empty when it is gone (removed, or
    replaced by a file, since it was seen). Any other :class:`OSError` is raised."""
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _identity(path: str) -> Identity | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_image_file(entry: os.DirEntry[str]) -> bool:
    """Whether ``entry`` is named like an image and is a regular file (after links); also
    when what it is cannot be found out (a link loop, an I/O error): then reading it fails
    its job with the reason, where skipping it would leave it out silently."""
    try:
        return is_image_path(entry.name) and entry.is_file()  # False when gone
    except OSError:
        return True


def _is_image_path_file(path: str) -> bool:
    """:func:`_is_image_file` for a path with no directory entry at hand."""
    if not is_image_path(path):
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


def _left_out(folder: str, leave_out: frozenset[str]) -> bool:
    """Whether ``folder`` is one of ``leave_out`` (real paths, see :func:`real_path`)."""
    return bool(leave_out) and real_path(folder) in leave_out


def real_path(path: str | os.PathLike[str]) -> str:
    """``path`` absolute, its symbolic links resolved (as far as it exists), as compared."""
    return os.path.normcase(os.path.realpath(path))


def _marked(entries: list[os.DirEntry[str]]) -> bool:
    """Whether a folder of these entries is a batch's output (it holds the marker)."""
    return any(entry.name == OUTPUT_MARKER for entry in entries)


def walk_images(
    root: str, stop: threading.Event, leave_out: frozenset[str] = frozenset()
) -> Iterator[str | Unlistable]:
    """Image files under ``root``, depth first, each folder's files before its subfolders,
    and the folders that could not be listed; never in the folders ``leave_out`` names (real
    paths: a batch's output and spill folders, whose cut-outs are no inputs), nor in a
    folder below ``root`` that holds :data:`OUTPUT_MARKER` (an earlier batch's output;
    ``root`` itself is walked)."""
    seen: set[Identity] = set()
    pending = [root]
    while pending and not stop.is_set():
        folder = pending.pop()
        identity = _identity(folder)
        if identity is None or identity in seen:
            continue
        seen.add(identity)
        subfolders = []
        try:
            entries = _scandir(folder)
        except OSError as exc:
            yield Unlistable(folder, folder, exc)
            continue
        if folder is not root and _marked(entries):
            continue
        for entry in entries:
            if stop.is_set():
                return
            if _is_dir(entry):
                if not _left_out(entry.path, leave_out):
                    subfolders.append(entry.path)
            elif _is_image_file(entry):
                yield entry.path
        pending.extend(reversed(subfolders))


def glob_base(pattern: str) -> str:
    """The folder a glob pattern starts from: its fixed leading folders (``.`` if none)."""
    return _split(pattern)[0] or "."


def _split(pattern: str) -> tuple[str, list[str]]:
    """``("base/folder", ["**", "*.png"])``: the literal leading folders, then the rest."""
    parts = re.split(r"[/" + re.escape(os.sep) + r"]", pattern)
    base: list[str] = []
    while parts and not glob.has_magic(parts[0]) and len(parts) > 1:
        base.append(parts.pop(0))
    folder = "/".join(base) if base != [""] else "/"
    return folder, [p for p in parts if p]


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _matcher(segment: str) -> Callable[[str], bool]:
    regex = re.compile(fnmatch.translate(segment))
    shows_hidden = _hidden(segment)
    return lambda name: (shows_hidden or not _hidden(name)) and regex.match(name) is not None


def glob_images(
    pattern: str, stop: threading.Event, leave_out: frozenset[str] = frozenset()
) -> Iterator[str | Unlistable]:
    """Image files matching ``pattern`` (``*``, ``?``, ``[...]`` and recursive ``**``), and
    the folders that could not be listed (with the rest of the pattern under them).

    Follows :func:`glob.glob`'s rules (wildcards and ``**`` skip hidden names), but enters
    each folder at most once per ``**``, so directory symlinks cannot make it loop; never
    enters the folders ``leave_out`` names below the pattern's fixed part (as
    :func:`walk_images`), nor a folder that holds :data:`OUTPUT_MARKER` and that a
    wildcard or ``**`` led to (one the pattern names is entered).
    """
    base, segments = _split(pattern)
    if not segments:
        return
    matchers = [None if s == "**" else _matcher(s) for s in segments]
    seen: set[tuple[Identity, int]] = set()
    pending: list[tuple[str, int]] = [(base, 0)]
    wild: set[str] = set()  # folders reached through a wildcard or "**", not named
    while pending and not stop.is_set():
        folder, index = pending.pop()
        last = index == len(segments) - 1
        match = matchers[index]
        later: list[tuple[str, int]] = []
        if match is None:  # "**": this folder and every folder below it
            identity = _identity(folder or ".")
            if identity is None or (identity, index) in seen:
                continue
            seen.add((identity, index))
            try:
                entries = _scandir(folder or ".")
            except OSError as exc:
                yield Unlistable(folder or ".", os.path.join(folder, *segments[index:]), exc)
                continue  # the rest of the pattern under it is that one spec
            if folder in wild and _marked(entries):
                continue  # an earlier batch's output, met by this "**"
            for entry in entries:
                if stop.is_set():
                    return
                path = os.path.join(folder, entry.name)
                if _is_dir(entry):
                    if not _hidden(entry.name) and not _left_out(path, leave_out):
                        later.append((path, index))
                        wild.add(path)
                elif last and not _hidden(entry.name) and _is_image_file(entry):
                    yield path
            if not last:
                later.insert(0, (folder, index + 1))
        elif not glob.has_magic(segments[index]):
            if folder in wild and os.path.lexists(os.path.join(folder, OUTPUT_MARKER)):
                continue  # an earlier batch's output, met by a wildcard
            path = os.path.join(folder, segments[index])
            if last:
                if _is_image_path_file(path):
                    yield path
            elif os.path.isdir(path) and not _left_out(path, leave_out):
                later.append((path, index + 1))
        else:
            try:
                entries = _scandir(folder or ".")
            except OSError as exc:
                yield Unlistable(folder or ".", os.path.join(folder, *segments[index:]), exc)
                continue
            if folder in wild and _marked(entries):
                continue  # an earlier batch's output, met by a wildcard
            for entry in entries:
                if stop.is_set():
                    return
                if not match(entry.name):
                    continue
                path = os.path.join(folder, entry.name)
                if last:
                    if _is_image_file(entry):
                        yield path
                elif _is_dir(entry) and not _left_out(path, leave_out):
                    later.append((path, index + 1))
                    wild.add(path)
        pending.extend(reversed(later))
