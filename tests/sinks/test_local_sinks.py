"""MemorySink, FileSystemSink, open_sink and the sync façade."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from photoroom_bg.errors import (
    ConfigurationError,
    ObjectNotFoundError,
    StorageError,
    StorageFullError,
    UnsafeKeyError,
)
from photoroom_bg.sinks import FileSystemSink, MemorySink, S3Sink, SyncSink, open_sink


async def test_memory_sink_size_cap() -> None:
    sink = MemorySink(max_bytes=10)
    await sink.put("a", b"12345")
    await sink.put("a", b"1234567890")  # replacing counts the new size only
    with pytest.raises(StorageFullError, match="max_bytes=10"):
        await sink.put("b", b"1")
    assert sink.objects == {"a": b"1234567890"}
    assert sink.total_bytes == 10


async def test_filesystem_writes_are_atomic_and_leave_no_temp_files(tmp_path: Path) -> None:
    sink = FileSystemSink(tmp_path / "out")
    stored = await sink.put("deep/er/x.png", b"data", content_type="image/png")
    assert (tmp_path / "out" / "deep" / "er" / "x.png").read_bytes() == b"data"
    assert stored.uri == (tmp_path / "out" / "deep" / "er" / "x.png").as_uri()
    assert [p.name for p in (tmp_path / "out" / "deep" / "er").iterdir()] == ["x.png"]


async def test_stored_files_get_the_umask_permissions_not_private_ones(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        await FileSystemSink(tmp_path).put("shared.png", b"data")
    finally:
        os.umask(old)
    assert (tmp_path / "shared.png").stat().st_mode & 0o777 == 0o644


async def test_a_crash_mid_write_keeps_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = FileSystemSink(tmp_path)
    await sink.put("x.png", b"old complete image")

    def crash(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(StorageError, match="I/O error"):
        await sink.put("x.png", b"new half-writ")
    assert (tmp_path / "x.png").read_bytes() == b"old complete image"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


async def test_a_full_disk_is_a_typed_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = FileSystemSink(tmp_path)
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, handle: object) -> None:
            self.handle = handle

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()  # type: ignore[attr-defined]

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: Full(real_fdopen(fd, mode)))
    with pytest.raises(StorageFullError, match="no space left"):
        await sink.put("x.png", b"data")
    assert list(tmp_path.iterdir()) == []


async def test_symlinks_cannot_escape_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    sink = FileSystemSink(root)
    with pytest.raises(UnsafeKeyError, match="outside"):
        await sink.put("link/x.png", b"x")
    assert list(outside.iterdir()) == []


async def test_filesystem_metadata_sidecar_and_stat(tmp_path: Path) -> None:
    sink = FileSystemSink(tmp_path, write_metadata=True)
    await sink.put("a.png", b"abc", content_type="image/webp", metadata={"source": "s"})
    stat = await sink.stat("a.png")
    assert stat.content_type == "image/webp"
    assert stat.metadata == {"source": "s"}
    with pytest.raises(UnsafeKeyError, match="reserved suffix"):
        await sink.put("a.png.meta.json", b"x")
    with pytest.raises(ObjectNotFoundError):
        await sink.url("missing.png")


def test_open_sink_from_strings(tmp_path: Path) -> None:
    assert isinstance(open_sink("memory://"), MemorySink)
    folder = open_sink(str(tmp_path / "out"))
    assert isinstance(folder, FileSystemSink)
    assert folder.root == (tmp_path / "out").resolve()
    from_uri = open_sink((tmp_path / "with space").as_uri())
    assert isinstance(from_uri, FileSystemSink)
    assert from_uri.root == (tmp_path / "with space").resolve()
    s3 = open_sink("s3://bucket/a/b", endpoint_url="http://127.0.0.1:1")
    assert isinstance(s3, S3Sink)
    assert (s3.bucket, s3.prefix) == ("bucket", "a/b/")
    same = MemorySink()
    assert open_sink(same) is same
    with pytest.raises(ConfigurationError, match="unsupported sink"):
        open_sink("ftp://host/x")
    with pytest.raises(ConfigurationError, match="names no bucket"):
        open_sink("s3://")


def test_sync_sink_works_inside_a_running_loop(tmp_path: Path) -> None:
    async def notebook_cell() -> bytes:
        sink = SyncSink(str(tmp_path))
        sink.put("n.png", b"sync")
        assert sink.exists("n.png")
        assert sink.url("n.png").startswith("file://")
        data = sink.get("n.png")
        sink.delete("n.png")
        assert not sink.exists("n.png")
        return data

    assert asyncio.run(notebook_cell()) == b"sync"
