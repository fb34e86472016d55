"""Small real file systems for tests of full disks: a tmpfs mounted for the test's time."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (``"1g"``, ``"256k"``) mounted on the new folder ``where``, and
    unmounted afterwards. Skips the test where mounting is not allowed."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=True)


@contextlib.contextmanager
def read_only_disk(where: Path) -> Iterator[Path]:
    """An empty tmpfs mounted read-only on the new folder ``where`` (no write succeeds
    there, as root neither), unmounted afterwards. Skips where mounting is not allowed."""
    with small_disk(where, "64k") as disk:
        remounted = subprocess.run(
            ["mount", "-o", "remount,ro", str(disk)], capture_output=True, text=True, check=False
        )
        if remounted.returncode != 0:
            pytest.skip(f"cannot make a read-only file system here: {remounted.stderr.strip()}")
        yield disk


def fill(disk: Path) -> None:
    """Take every byte left on ``disk`` with a file of its own."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        block = b"\0" * 4096
        while True:
            try:
                written = os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                written = 0
            if written < len(block):
                if len(block) == 1:
                    return  # not even one byte more fits
                block = block[: len(block) // 2]
    finally:
        os.close(fd)


def no_file_at(path: Path, kind: str) -> str:
    """Put at ``path`` what no reader of a file may open as one: a named pipe (``kind``
    ``"fifo"``: opening it waits for a writer forever) or a symlink to ``/dev/zero``
    (``"device"``: it reads without end). Returns how the SDK names it."""
    if kind == "fifo":
        os.mkfifo(path)
        return "a FIFO (named pipe)"
    path.symlink_to("/dev/zero")
    return "a character device"
