"""read_regular_file: a regular file read whole, anything else refused before a byte is read,
and a file growing under it read no further than its cap."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from photoroom_bg._images import FileTooLarge, LargerThan, NotARegularFile, read_regular_file


def test_a_regular_file_is_read_whole_and_its_descriptor_closed(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 10_000)
    before = len(os.listdir("/proc/self/fd"))
    assert read_regular_file(path, 10_000) == b"x" * 10_000
    assert len(os.listdir("/proc/self/fd")) == before
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert read_regular_file(tmp_path / "empty.jpg", 10) == b""


def test_what_is_over_a_cap_or_no_file_is_refused_and_closed(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 100)
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(FileTooLarge) as too_large:
        read_regular_file(path, 99)
    assert too_large.value.size == 100
    with pytest.raises(LargerThan):
        read_regular_file(path, 1000, large=50)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotARegularFile, match="FIFO"):
        read_regular_file(tmp_path / "fifo", 1000)  # never opened: it would block
    with pytest.raises(IsADirectoryError):
        read_regular_file(tmp_path, 1000)
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize(("cap", "grown"), [(1000, 600), (500, 600)])
def test_a_file_that_grows_while_read_is_read_up_to_its_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cap: int, grown: int
) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"y" * grown)
    real_fstat = os.fstat

    class Earlier:  # the size when it was opened: a writer appends since
        def __init__(self, info: os.stat_result) -> None:
            self.info = info
            self.st_size = 100

        def __getattr__(self, name: str) -> Any:
            return getattr(self.info, name)

    monkeypatch.setattr(os, "fstat", lambda fd: Earlier(real_fstat(fd)))
    if grown <= cap:
        assert read_regular_file(path, cap) == b"y" * grown
    else:
        with pytest.raises(FileTooLarge) as too_large:
            read_regular_file(path, cap)
        assert (too_large.value.size, too_large.value.exact) == (cap + 1, False)
