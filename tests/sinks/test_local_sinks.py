"""MemorySink, FileSystemSink, open_sink and the sync façade."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest

from photoroom_bg.errors import (
    ConfigurationError,
    ObjectNotFoundError,
    StorageAuthError,
    StorageError,
    StorageFullError,
    UnsafeKeyError,
)
from photoroom_bg.sinks import FileSystemSink, MemorySink, S3Sink, SyncSink, open_sink

from ..conftest import modes_bind


async def test_memory_sink_size_cap() -> None:
    sink = MemorySink(max_bytes=10)
    await sink.put("a", b"12345")
    await sink.put("a", b"1234567890")  # replacing counts the new size only
    with pytest.raises(StorageFullError, match="max_bytes=10"):
        await sink.put("b", b"1")
    assert sink.objects == {"a": b"1234567890"}
    assert sink.total_bytes == 10


async def test_a_capped_memory_sink_counts_its_bytes_without_walking_its_objects() -> None:
    """A put into a capped sink of N objects once summed all N sizes: a batch of N images
    did N**2 / 2 additions."""

    class Walked(dict[str, Any]):
        walks = 0

        def values(self) -> Any:
            Walked.walks += 1
            return super().values()

    sink = MemorySink(max_bytes=100)
    sink._objects = Walked()
    for key, data in [("a", b"12345"), ("b", b"123"), ("a", b"1"), ("c", b"1234")]:
        await sink.put(key, data)
    assert sink.total_bytes == 8
    await sink.delete("b")
    await sink.delete("missing")
    assert sink.total_bytes == 5
    await sink.put("d", b"x" * 95)
    with pytest.raises(StorageFullError, match="max_bytes=100"):
        await sink.put("e", b"1")
    assert sink.total_bytes == 100 == sum(len(v) for v in sink.objects.values())
    assert Walked.walks == 0


@pytest.mark.parametrize("cap", [-1, 1.5, True, float("nan")], ids=repr)
def test_a_memory_sink_cap_that_is_no_byte_count_is_refused(cap: Any) -> None:
    # a negative cap refused every put; a NaN one none
    with pytest.raises(ConfigurationError, match="max_bytes"):
        MemorySink(max_bytes=cap)


async def test_filesystem_writes_are_atomic_and_leave_no_temp_files(tmp_path: Path) -> None:
    sink = FileSystemSink(tmp_path / "out")
    stored = await sink.put("deep/er/x.png", b"data", content_type="image/png")
    assert (tmp_path / "out" / "deep" / "er" / "x.png").read_bytes() == b"data"
    assert stored.uri == (tmp_path / "out" / "deep" / "er" / "x.png").as_uri()
    assert [p.name for p in (tmp_path / "out" / "deep" / "er").iterdir()] == ["x.png"]


@pytest.mark.parametrize(
    "key", ["a b.png", "100%.png", "#1?.png", "caf\u00e9/\u732b.png", "x;y=z&w.png"]
)
async def test_a_stored_objects_uri_is_its_files_uri_whatever_the_name(
    tmp_path: Path, key: str
) -> None:
    """Put and stat describe a file by the URI pathlib gives it, characters escaped."""
    sink = FileSystemSink(tmp_path / "out dir")
    stored = await sink.put(key, b"data")
    expected = (tmp_path / "out dir" / key).as_uri()
    assert stored.uri == stored.url == expected
    assert (await sink.stat(key)).uri == expected
    assert url2pathname(urlparse(expected).path) == str(tmp_path / "out dir" / key)


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
    real_write = os.write
    calls = 0

    def full(fd: int, data: bytes) -> int:  # two bytes fit, then the disk is full
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data[:2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
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


async def test_symlinks_that_stay_inside_the_root_are_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "2026" / "11").mkdir(parents=True)
    (root / "latest").symlink_to(root / "2026" / "11")
    (tmp_path / "secret.png").write_bytes(b"secret")
    (root / "2026" / "11" / "leak.png").symlink_to(tmp_path / "secret.png")
    sink = FileSystemSink(root)
    stored = await sink.put("latest/a.png", b"a")
    assert (root / "2026" / "11" / "a.png").read_bytes() == b"a"
    assert sink.path("latest/a.png") == root / "2026" / "11" / "a.png"
    assert stored.uri == (root / "2026" / "11" / "a.png").as_uri()
    with pytest.raises(UnsafeKeyError, match="outside"):
        await sink.get("latest/leak.png")  # the last part is a link out of the root


async def test_a_put_replaces_a_symlink_at_its_name_and_writes_nothing_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the rename replaces whatever is at the name, a link included, so the put need not look
    # there: it wrote through a link that stayed in the root, and refused one that left it
    root = tmp_path / "root"
    (root / "2026").mkdir(parents=True)
    (root / "latest").symlink_to(root / "2026")
    (root / "kept.png").write_bytes(b"kept")
    (tmp_path / "secret.png").write_bytes(b"secret")
    (root / "inside.png").symlink_to(root / "kept.png")
    (root / "outside.png").symlink_to(tmp_path / "secret.png")
    (root / "2026" / "deep.png").symlink_to(tmp_path / "secret.png")
    sink = FileSystemSink(root)
    looked: list[str] = []
    real_lstat = os.lstat
    monkeypatch.setattr(
        os, "lstat", lambda path, **kw: looked.append(str(path)) or real_lstat(path, **kw)
    )
    for key in ("inside.png", "outside.png"):
        stored = await sink.put(key, b"new")
        assert stored.uri == (root / key).as_uri()
    assert looked == []  # a key with no folder: not one lstat
    stored = await sink.put("latest/deep.png", b"new")  # the folder followed, not the name
    assert stored.uri == (root / "2026" / "deep.png").as_uri()
    for name in ("inside.png", "outside.png", "2026/deep.png"):
        assert not (root / name).is_symlink()
        assert (root / name).read_bytes() == b"new"
    assert (root / "kept.png").read_bytes() == b"kept"
    assert (tmp_path / "secret.png").read_bytes() == b"secret"


def test_keys_under_a_sink_rooted_at_the_file_systems_root_are_plain_paths(
    tmp_path: Path,
) -> None:
    tmp_path = tmp_path.resolve()
    sink = FileSystemSink("/")
    under = tmp_path.relative_to("/").as_posix()
    assert sink.path(f"{under}/x.png") == tmp_path / "x.png"
    assert sink.path(f"{under}/new/deeper/x.png") == tmp_path / "new" / "deeper" / "x.png"


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
    # a URI's scheme is case-insensitive: these were "unsupported sink"
    upper = open_sink("S3://bucket/a/b", endpoint_url="http://127.0.0.1:1")
    assert isinstance(upper, S3Sink)
    assert (upper.bucket, upper.prefix) == ("bucket", "a/b/")
    assert isinstance(open_sink("Memory://"), MemorySink)
    same = MemorySink()
    assert open_sink(same) is same
    with pytest.raises(ConfigurationError, match="unsupported sink"):
        open_sink("ftp://host/x")
    with pytest.raises(ConfigurationError, match="names no bucket"):
        open_sink("s3://")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        # each once made a sink: a query string became part of the bucket's name, and a
        # prefix's odd segments put every object where no key is allowed
        ("s3://bucket?region=eu-west-1", "no bucket name has '=', '\\?'"),
        ("s3://bucket#x/out", "no bucket name has '#'"),
        ("s3://bucket/../out", "a prefix has no empty, '.' or '..' segments"),
        ("s3://bucket/a/./out", "a prefix has no empty"),
        ("s3://bucket/a//out", "a prefix has no empty"),
        ("s3://bucket//out", "a prefix has no empty"),  # it was stored under "out/"
        # a lone surrogate or a NUL: every put failed after the engine was paid (botocore's
        # UnicodeEncodeError, wrapped as a StorageError)
        ("s3://bucket/out\ud800/", "no key can start with this prefix: .* not text"),
        ("s3://bucket/out\x00/", "no key can start with this prefix: .* NUL byte"),
    ],
)
def test_an_s3_uri_no_bucket_or_key_can_follow_is_refused(uri: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as refused:
        open_sink(uri, endpoint_url="http://127.0.0.1:1")
    if "bucket name" in message:  # where the endpoint and region go, for each reader
        for setting in ("endpoint_url=", "--endpoint-url", "PHOTOROOM_BG_S3_ENDPOINT_URL"):
            assert setting in str(refused.value)
    # a legacy bucket name (upper case, '_') and a prefix with odd characters still work
    legacy = open_sink("s3://Old_Bucket/a?b/", endpoint_url="http://127.0.0.1:1")
    assert isinstance(legacy, S3Sink)
    assert (legacy.bucket, legacy.prefix) == ("Old_Bucket", "a?b/")


async def test_a_root_that_cannot_be_a_folder_is_refused(tmp_path: Path) -> None:
    # "" once meant the current folder, a NUL byte raised a ValueError, and a file as the
    # root answered exists() with False, so a batch paid for cut-outs it could never store
    for root in ("", "a\x00b"):
        with pytest.raises(ConfigurationError, match="folder"):
            open_sink(root)
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"x")
    for root in (blocker, blocker / "below"):
        sink = FileSystemSink(root)
        with pytest.raises(StorageError, match="is a file"):
            await sink.exists("x.png")
    assert await FileSystemSink(tmp_path / "not-yet" / "made").exists("x.png") is False


async def test_a_key_whose_folder_is_a_file_in_the_sink_is_refused(tmp_path: Path) -> None:
    # the put raised a plain StorageError (which a batch retries for its store budget) and
    # stat() said "not found" (so a batch paid for a cut-out it could not store)
    sink = FileSystemSink(tmp_path)
    await sink.put("shoes", b"a file")
    for key in ("shoes/a.png", "shoes/deeper/a.png"):
        with pytest.raises(UnsafeKeyError, match="shoes is a file, not a folder"):
            await sink.put(key, b"data")
        with pytest.raises(UnsafeKeyError, match="shoes is a file, not a folder"):
            await sink.stat(key)
    assert await sink.get("shoes") == b"a file"
    assert [p.name for p in tmp_path.iterdir()] == ["shoes"]


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


def _temp_name(name: str) -> str:
    return f".{name}.{'0123456789ab'}.tmp"


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


async def test_stale_temporary_files_are_removed_by_the_next_put(tmp_path: Path) -> None:
    stale = tmp_path / _temp_name("a.png")
    fresh = tmp_path / ".b.png.ba9876543210.tmp"
    stale.write_bytes(b"half an image")
    fresh.write_bytes(b"maybe being written right now")
    _age(stale, 3600)
    other = tmp_path / ".notes.txt.tmp"  # not of the sink's naming: never touched
    other.write_bytes(b"x")
    _age(other, 3600)
    await FileSystemSink(tmp_path).put("c.png", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, other.name, "c.png"]


_WRITER = """
import asyncio, os, sys
from photoroom_bg.sinks import FileSystemSink

def stuck(src, dst):  # the process is killed between the write and the rename
    print("writing", flush=True)
    sys.stdin.read()

os.replace = stuck
asyncio.run(FileSystemSink(sys.argv[1]).put("killed.png", b"x" * 1000))
"""


async def test_a_killed_writers_temporary_file_is_left_alone_while_it_lives_then_removed(
    tmp_path: Path,
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"writing\n"
        [temp] = [p for p in tmp_path.iterdir() if p.name.startswith(".killed.png.")]
        _age(temp, 3600)  # old, but its writer is alive and holds it: keep it
        await FileSystemSink(tmp_path).put("other.png", b"data")
        assert temp.exists()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        await FileSystemSink(tmp_path).put("later.png", b"data")
        assert not temp.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["later.png", "other.png"]
    finally:
        child.kill()
        child.wait(timeout=60)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


async def test_temporary_file_names_are_never_keys(tmp_path: Path) -> None:
    sink = FileSystemSink(tmp_path)
    (tmp_path / _temp_name("x.png")).write_bytes(b"half")
    for call in (sink.exists, sink.get, sink.stat, sink.url, sink.delete):
        with pytest.raises(UnsafeKeyError, match="temporary"):
            await call(_temp_name("x.png"))  # type: ignore[operator]
    with pytest.raises(UnsafeKeyError, match="temporary"):
        await sink.put(f"sub/{_temp_name('x.png')}", b"x")


async def test_a_temporary_name_costs_no_system_call_and_a_taken_one_is_drawn_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a name drawn from the system's randomness cost a getrandom() call for every image
    drawn: list[int] = []
    monkeypatch.setattr(random, "_urandom", lambda size: drawn.append(size) or bytes(size))
    names = iter([0xABC, 0xABC, 0xDEF, *range(5)])
    monkeypatch.setattr(random, "getrandbits", lambda bits: next(names))
    sink = FileSystemSink(tmp_path)
    taken = tmp_path / ".x.png.000000000abc.tmp"  # someone's: never opened, never removed
    taken.write_bytes(b"theirs")
    await sink.put("x.png", b"ours")
    assert drawn == []
    assert (tmp_path / "x.png").read_bytes() == b"ours"
    assert taken.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == [taken.name, "x.png"]
    for value in range(5):  # every name it draws is taken: a typed error, nothing written
        (tmp_path / f".y.png.{value:012x}.tmp").write_bytes(b"theirs")
    with pytest.raises(StorageError, match=r"cannot write 'y\.png'"):
        await sink.put("y.png", b"ours")
    assert not (tmp_path / "y.png").exists()


def _record_fsyncs_and_renames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """From now on, each ``fsync`` (of the path it synced) and ``os.replace`` (to its target),
    in order, once done."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        events.append(("rename", str(dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


async def test_a_put_is_durable_once_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _record_fsyncs_and_renames(monkeypatch)
    root = tmp_path / "out"
    await FileSystemSink(root).put("new/deeper/x.png", b"data")
    target = root / "new" / "deeper" / "x.png"
    renamed = events.index(("rename", str(target)))
    assert ("fsync", str(target.parent)) in events[renamed + 1 :]  # the rename is on disk
    for made in (root, root / "new", root / "new" / "deeper"):  # so are the new folders
        assert ("fsync", str(made.parent)) in events[:renamed]


async def test_concurrent_puts_into_one_folder_share_its_fsync_once_their_renames_are_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = threading.Lock()
    events: list[tuple[str, str]] = []
    renamed = threading.Condition(lock)
    real_fsync, real_replace = os.fsync, os.replace
    folder = tmp_path / "out"
    folder.mkdir()

    def log(*event: str) -> None:
        with lock:
            events.append(event)
            renamed.notify_all()

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path != str(folder):
            real_fsync(fd)
            return
        with lock:
            first = not any(e[0] == "fsync-start" for e in events)
        log("fsync-start", path)
        if first:  # held until the three other puts have renamed: they must wait for it
            with lock:
                assert renamed.wait_for(lambda: sum(e[0] == "rename" for e in events) == 4, 30)
        real_fsync(fd)
        log("fsync-end", path)

    def replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        log("rename", str(dst))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(8))
    sink = FileSystemSink(tmp_path / "out")
    sink._quick_puts.until = float("inf")  # the puts in worker threads, as on a slow disk

    async def put(key: str) -> None:
        await sink.put(key, key.encode())
        log("returned", str(folder / key))

    await asyncio.gather(*(put(f"{i}.png") for i in range(4)))
    fsyncs = [i for i, e in enumerate(events) if e[0] == "fsync-start"]
    assert len(fsyncs) == 2  # one each before: 4
    for i in range(4):
        target = str(folder / f"{i}.png")
        after = events.index(("rename", target))
        returned = events.index(("returned", target))
        # an fsync of the folder began after the rename and ended before the put returned
        covering = [
            start
            for start in fsyncs
            if after < start and events.index(("fsync-end", str(folder)), start) < returned
        ]
        assert covering, (target, events)
    assert sink._folder_syncs._tickets == {}  # nothing kept once every put has returned


def _never_slow(sink: FileSystemSink) -> None:
    """Keep the sink's small puts on the event loop, however long an fsync takes: on a busy
    machine one can take longer than the quick calls' limit, and the puts after it (rightly)
    go to worker threads, which is not what the test is about (that has tests of its own)."""
    sink._quick_puts.clock = lambda: 0.0


@pytest.mark.parametrize("write_metadata", [False, True])
async def test_puts_on_the_event_loop_share_the_folder_fsync_of_their_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_metadata: bool
) -> None:
    """Small puts run on the event loop, one after the other: each used to fsync the folder
    on its own. Those that rename in the same turn of the loop now share one fsync, which
    begins after the last of their renames and ends before any of them returns."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    folder = tmp_path / "out"
    here = threading.current_thread()

    def fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        real_fsync(fd)
        if path == str(folder):
            assert threading.current_thread() is here  # quick: still on the event loop
            events.append(("fsync", path))

    def replace(src: Any, dst: Any) -> None:
        real_replace(src, dst)
        events.append(("rename", str(dst)))

    sink = FileSystemSink(folder, write_metadata=write_metadata)
    _never_slow(sink)
    await sink.put("first.png", b"first")  # makes the folder
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)

    async def put(key: str) -> None:
        await sink.put(key, key.encode(), metadata={"k": key})
        events.append(("returned", str(folder / key)))

    await asyncio.gather(*(put(f"{i}.png") for i in range(8)))
    fsyncs = [i for i, e in enumerate(events) if e[0] == "fsync"]
    assert len(fsyncs) == 1, events  # one each before: 8
    renames = [i for i, e in enumerate(events) if e[0] == "rename"]
    returns = [i for i, e in enumerate(events) if e[0] == "returned"]
    assert len(renames) == (16 if write_metadata else 8)  # the metadata files' too
    assert max(renames) < fsyncs[0] < min(returns)
    assert sink._folder_syncs._tickets == {}  # nothing kept once every put has returned
    for i in range(8):
        assert (folder / f"{i}.png").read_bytes() == f"{i}.png".encode()


async def test_a_put_no_other_task_could_join_takes_no_turn_of_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting for the other puts of its turn costs a turn of the event loop (a poll and a
    task step per image): a put with no other task ready to run before it would resume,
    so none to share the fsync with, fsyncs the folder at once, after its rename."""
    selector: Any = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]
    polls: list[object] = []
    real_select = selector.select

    def select(timeout: float | None = None) -> Any:
        polls.append(timeout)
        return real_select(timeout)

    folder = tmp_path / "out"
    sink = FileSystemSink(folder)
    _never_slow(sink)
    await sink.put("first.png", b"first")  # makes the folder
    monkeypatch.setattr(selector, "select", select)
    events: list[tuple[str, str]] = _record_fsyncs_and_renames(monkeypatch)
    for i in range(5):
        await sink.put(f"{i}.png", b"cut")
        events.append(("returned", f"{i}.png"))
    assert polls == []  # one each before
    for i in range(5):  # each rename made durable by an fsync of the folder before returning
        renamed = events.index(("rename", str(folder / f"{i}.png")))
        returned = events.index(("returned", f"{i}.png"))
        assert ("fsync", str(folder)) in events[renamed + 1 : returned]
    assert sink._folder_syncs._tickets == {}


async def test_a_put_cancelled_after_its_rename_still_fsyncs_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while it waits for the others of its turn, a put that renamed its file
    still sees the folder fsynced before it ends, and leaves no ticket behind."""
    folder = tmp_path / "out"
    sink = FileSystemSink(folder)
    await sink.put("first.png", b"first")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", fsync)
    task = asyncio.ensure_future(sink.put("cut.png", b"cut"))
    while not (folder / "cut.png").exists():  # renamed, now waiting for its turn to end
        await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert synced[-1] == str(folder)
    assert sink._folder_syncs._tickets == {}


async def test_stat_reads_no_object_back_and_uses_the_checksum_kept_at_write_time(
    tmp_path: Path,
) -> None:
    import hashlib
    import tracemalloc

    data = os.urandom(16 * 1024 * 1024)
    expected = "sha256:" + hashlib.sha256(data).hexdigest()
    sink = FileSystemSink(tmp_path)
    await sink.put("big.png", data, content_type="image/png")
    del data
    tracemalloc.start()
    try:
        described = await sink.stat("big.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024  # the 16 MB object was not read
    assert described.size == 16 * 1024 * 1024
    assert described.content_type == "image/png"
    xattrs = hasattr(os, "getxattr")
    assert described.checksum == (expected if xattrs else described.checksum)
    assert described.checksum.startswith("sha256:" if xattrs else 'W/"')


async def test_the_checksum_stamp_takes_no_disk_block_of_its_own(tmp_path: Path) -> None:
    """The stamp used to be 97 characters of text: too long for ext4 to keep in the inode, so
    every object, however small, took a 4 KiB block more on disk than its bytes need (and
    the put allocated and journaled it)."""
    data = os.urandom(3000)
    sink = FileSystemSink(tmp_path / "sink")
    stored = await sink.put("small.png", data, content_type="image/png")
    plain = tmp_path / "plain.png"
    with open(plain, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    assert os.stat(sink.path("small.png")).st_blocks == os.stat(plain).st_blocks
    described = await sink.stat("small.png")
    assert described.checksum == stored.checksum == "sha256:" + hashlib.sha256(data).hexdigest()


async def test_a_checksum_stamped_in_the_earlier_text_form_is_still_read(tmp_path: Path) -> None:
    sink = FileSystemSink(tmp_path)
    stored = await sink.put("old.png", b"abc", content_type="image/png")
    path = sink.path("old.png")
    info = os.stat(path)
    text = f"{stored.checksum} {info.st_size} {info.st_mtime_ns}"
    os.setxattr(path, "user.photoroom_bg.checksum", text.encode())
    assert (await sink.stat("old.png")).checksum == stored.checksum
    stale = f"{stored.checksum} {info.st_size + 1} {info.st_mtime_ns}"  # another file's
    os.setxattr(path, "user.photoroom_bg.checksum", stale.encode())
    assert (await sink.stat("old.png")).checksum.startswith('W/"3-')
    os.setxattr(path, "user.photoroom_bg.checksum", b"\xff" * 48)  # not this file's
    assert (await sink.stat("old.png")).checksum.startswith('W/"3-')


async def test_stat_falls_back_to_the_sidecar_then_to_a_weak_validator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_xattrs(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", no_xattrs, raising=False)
    with_sidecar = FileSystemSink(tmp_path, write_metadata=True)
    stored = await with_sidecar.put("a.png", b"abc", content_type="image/png")
    assert (await with_sidecar.stat("a.png")).checksum == stored.checksum
    plain = FileSystemSink(tmp_path / "plain")
    await plain.put("b.png", b"abc")
    weak = (await plain.stat("b.png")).checksum
    assert re.fullmatch(r'W/"3-[0-9a-f]+"', weak)
    # an object changed behind the sink's back is not described by its old checksum
    monkeypatch.undo()
    stored = await plain.put("c.png", b"abc")
    (tmp_path / "plain" / "c.png").write_bytes(b"abcd")
    assert (await plain.stat("c.png")).checksum.startswith('W/"4-')


@pytest.mark.parametrize(
    "sidecar", ["{nope", "[" * 100_000 + "]" * 100_000, '{"checksum": ' + "1" * 5_000 + "}"]
)
async def test_a_sidecar_that_cannot_be_read_leaves_stat_to_the_file(
    tmp_path: Path, sidecar: str
) -> None:
    # a sidecar nested past the parser's recursion raised RecursionError out of stat()
    sink = FileSystemSink(tmp_path)
    await sink.put("a.png", b"abc", content_type="image/png")
    (tmp_path / "a.png.meta.json").write_text(sidecar)
    info = await sink.stat("a.png")
    assert (info.size, info.content_type) == (3, "image/png")


@pytest.mark.parametrize("write_metadata", [False, True])
async def test_without_checksums_nothing_is_hashed_and_the_checksum_is_a_weak_validator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_metadata: bool
) -> None:
    """``checksums=False`` saves the sha-256 of every object; what the put returns, and what
    ``stat`` gives later, is then the size-and-mtime validator, and no stamp is left behind
    that a later ``stat`` could believe."""
    from photoroom_bg.sinks import _filesystem

    hashed: list[int] = []
    real = _filesystem.sha256_checksum

    def counted(data: bytes) -> str:
        hashed.append(len(data))
        return real(data)

    monkeypatch.setattr(_filesystem, "sha256_checksum", counted)
    sink = FileSystemSink(tmp_path, checksums=False, write_metadata=write_metadata)
    stored = await sink.put("a/b.png", b"abcde", content_type="image/png")
    assert hashed == []
    info = os.stat(sink.path("a/b.png"))
    assert stored.checksum == f'W/"5-{info.st_mtime_ns:x}"'
    assert (await sink.stat("a/b.png")).checksum == stored.checksum
    assert sink.path("a/b.png").read_bytes() == b"abcde"
    if hasattr(os, "getxattr"):
        assert "user.photoroom_bg.checksum" not in os.listxattr(sink.path("a/b.png"))
    # an object stamped earlier is replaced by one without a stamp: its old checksum goes
    stamped = FileSystemSink(tmp_path)
    first = await stamped.put("c.png", b"xyz")
    assert first.checksum.startswith("sha256:")
    assert hashed == [3]
    again = await sink.put("c.png", b"xyz")
    assert again.checksum.startswith('W/"3-')
    assert (await stamped.stat("c.png")).checksum == again.checksum
    assert hashed == [3]


@pytest.mark.parametrize("write_metadata", [False, True])
async def test_a_sink_that_is_not_durable_fsyncs_nothing_and_still_writes_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_metadata: bool
) -> None:
    """``durable=False`` leaves writing back to the operating system: no fsync of an object,
    of its folder or of a folder it creates; the object still goes through a temporary file
    renamed over its name (a reader never sees half of it), and nothing else changes."""
    synced: list[int] = []
    real = os.fsync

    def counted(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counted)
    renamed: list[tuple[str, str]] = []
    real_replace = os.replace

    def replace(src: Any, dst: Any) -> None:
        renamed.append((os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    durable = FileSystemSink(tmp_path / "durable", write_metadata=write_metadata)
    await durable.put("a/b.png", b"abcde", content_type="image/png")
    assert len(synced) >= 3  # the object, its folder, the folder made for it (the test sees them)
    synced.clear()
    renamed.clear()
    sink = FileSystemSink(tmp_path / "scratch", durable=False, write_metadata=write_metadata)
    stored = await sink.put("a/b.png", b"abcde", content_type="image/png")
    await sink.put("a/b.png", b"fghij", content_type="image/png")  # replaced the same way
    assert synced == []
    names = ["b.png", "b.png.meta.json"] if write_metadata else ["b.png"]
    assert [dst for _, dst in renamed] == names * 2
    assert all(src.startswith(".b.png") and src.endswith(".tmp") for src, _ in renamed)
    assert sink.path("a/b.png").read_bytes() == b"fghij"
    assert sorted(os.listdir(tmp_path / "scratch" / "a")) == names
    assert stored.checksum.startswith("sha256:")
    assert (await sink.stat("a/b.png")).size == 5
    assert await sink.get("a/b.png") == b"fghij"


async def test_keys_the_file_system_cannot_hold_are_typed_errors_everywhere(
    tmp_path: Path,
) -> None:
    sink = FileSystemSink(tmp_path)
    too_long = "x" * 300 + ".png"
    for call in (sink.exists, sink.get, sink.stat, sink.url, sink.delete):
        with pytest.raises(UnsafeKeyError, match="bytes"):
            await call(too_long)  # type: ignore[operator]
    with pytest.raises(UnsafeKeyError, match="bytes"):
        await sink.put(too_long, b"x")
    with pytest.raises(UnsafeKeyError, match="bytes"):
        await sink.put("x" * 240 + ".png", b"x")  # fits, but its temporary file would not
    deep = "/".join(["d" * 200] * 25) + "/x.png"  # each name fits; the whole path does not
    for call in (sink.exists, sink.get, sink.stat, sink.url, sink.delete):
        with pytest.raises(StorageError):
            await call(deep)  # type: ignore[operator]
    with pytest.raises(UnsafeKeyError, match="too long"):
        await sink.put(deep, b"x")
    assert [p.name for p in tmp_path.iterdir()] in ([], ["d" * 200])


_MODES_BIND = "PHOTOROOM_BG_TEST_MODES_BIND"


async def test_a_folder_the_sink_may_not_write_is_a_typed_error(tmp_path: Path) -> None:
    if os.geteuid() == 0 and _MODES_BIND not in os.environ:
        # root ignores file modes: run this test again in a pytest that keeps uid 0 but
        # has lost the two capabilities that bypass them
        test = f"{__file__}::test_a_folder_the_sink_may_not_write_is_a_typed_error"
        child = modes_bind([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test])
        done = subprocess.run(
            child,
            env={**os.environ, _MODES_BIND: "1"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "\n1 passed" in done.stdout, done.stdout
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "x.png").write_bytes(b"x")
    locked.chmod(0o500)
    try:
        sink = FileSystemSink(locked)
        with pytest.raises(StorageAuthError, match="Permission denied"):
            await sink.put("y.png", b"data")
        with pytest.raises(StorageAuthError):
            await sink.delete("x.png")
        assert await sink.get("x.png") == b"x"
    finally:
        locked.chmod(0o700)


async def test_a_special_file_under_a_key_is_never_read(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    sink = FileSystemSink(tmp_path)
    assert not await sink.exists("pipe.png")
    with pytest.raises(StorageError, match="FIFO"):
        await sink.get("pipe.png")
    with pytest.raises(ObjectNotFoundError):
        await sink.stat("pipe.png")


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (errno.EACCES, StorageAuthError),
        (errno.EROFS, StorageAuthError),
        (errno.EDQUOT, StorageFullError),
        (errno.ENAMETOOLONG, UnsafeKeyError),
        (errno.EIO, StorageError),
    ],
)
async def test_every_os_error_of_a_write_is_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, error: type[Exception]
) -> None:
    sink = FileSystemSink(tmp_path)
    await sink.put("x.png", b"old")

    def failing_open(*args: object, **kwargs: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "open", failing_open)
    with pytest.raises(error) as caught:
        await sink.put("x.png", b"new")
    assert type(caught.value) is error
    monkeypatch.undo()
    assert await sink.get("x.png") == b"old"


async def test_small_puts_and_look_ups_run_in_place_large_or_slow_ones_in_worker_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photoroom_bg._threads import QUICK_BYTES

    here = threading.current_thread()
    seen: list[tuple[str, threading.Thread]] = []
    real_fsync, real_lstat = os.fsync, os.lstat
    now = [0.0]
    slow = [False]

    def fsync(fd: int) -> None:
        seen.append(("fsync", threading.current_thread()))
        if slow[0]:
            now[0] += 1.0  # as a disk busy writing back would take
            slow[0] = False  # once
        real_fsync(fd)

    def lstat(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        seen.append(("lstat", threading.current_thread()))
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "lstat", lstat)
    sink = FileSystemSink(tmp_path / "out")
    sink._quick_puts.clock = sink._quick_lookups.clock = lambda: now[0]

    def where() -> set[bool]:
        places = {thread is here for _, thread in seen}
        seen.clear()
        return places

    await sink.put("small.png", b"small")
    assert await sink.exists("small.png")
    assert not await sink.exists("missing.png")
    assert where() == {True}  # no hand-over to a thread for a few system calls
    await sink.put("large.png", b"x" * (QUICK_BYTES + 1))
    assert where() == {False}  # it may take a while: never on the event loop
    slow[0] = True
    await sink.put("slow.png", b"slow")
    fsyncs = [thread for call, thread in seen if call == "fsync"]
    assert fsyncs[0] is here  # the file's fsync, in place: it was slow
    assert where() == {True, False}  # the folder's, just after it, in a thread
    await sink.put("next.png", b"next")  # the put after a slow one goes to a thread
    assert where() == {False}
    assert await sink.exists("next.png")  # look-ups were quick: still in place
    assert where() == {True}
    assert (tmp_path / "out" / "next.png").read_bytes() == b"next"


async def test_the_checksum_stamp_is_on_the_file_before_its_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stamp is what lets ``stat`` give the checksum without reading the file back: set
    after the fsync, it would be lost with a power cut while the file survived."""
    events: list[str] = []
    real_fsync, real_setxattr = os.fsync, os.setxattr

    def fsync(fd: int) -> None:
        if os.path.isfile(f"/proc/self/fd/{fd}"):
            events.append("fsync")
        real_fsync(fd)

    def setxattr(*args: Any, **kwargs: Any) -> None:
        events.append("setxattr")
        real_setxattr(*args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "setxattr", setxattr)
    sink = FileSystemSink(tmp_path)
    stored = await sink.put("a.png", b"abc")
    assert events == ["setxattr", "fsync"]
    assert (await sink.stat("a.png")).checksum == stored.checksum
