"""Hostile local inputs: FIFOs, devices, sockets, huge sparse files, symlink loops, names that
are not UTF-8 or hide bidi controls, and images whose extension lies."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import respx
from PIL import Image

from photoroom_bg import AsyncPhotoroomClient
from photoroom_bg._images import load_image, validate_image
from photoroom_bg._listing import OUTPUT_MARKER
from photoroom_bg.errors import (
    InvalidImageError,
    InvalidSourceError,
    SourceError,
    SourceTooLargeError,
)
from photoroom_bg.sources import ImageSource, SourceReader, iter_sources

from .conftest import png_bytes

GB = 1024**3


def jpeg_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


@pytest.fixture
def unix_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "s.png"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    yield path
    server.close()


@pytest.fixture
def zero_link(tmp_path: Path) -> Path:
    path = tmp_path / "zero.png"
    path.symlink_to("/dev/zero")
    return path


@pytest.fixture
def sparse_8gb(tmp_path: Path) -> Path:
    path = tmp_path / "huge.png"
    with path.open("wb") as handle:
        handle.write(png_bytes()[:16])
        handle.truncate(8 * GB)  # sparse: no disk used, 8 GB to anyone who reads it
    return path


SPECIAL = ["fifo", "unix_socket", "zero_link"]
KINDS = {"fifo": "FIFO", "unix_socket": "socket", "zero_link": "character device"}


@pytest.mark.parametrize("special", SPECIAL)
async def test_special_files_are_refused_by_the_reader_before_any_read(
    special: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(special)
    async with SourceReader() as reader:
        with anyio.fail_after(30), pytest.raises(InvalidSourceError, match=KINDS[special]):
            await reader.read(ImageSource("path", str(path), path.stem))


@pytest.mark.parametrize("special", SPECIAL)
def test_special_files_are_refused_by_the_client_before_any_read(
    special: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(special)
    with pytest.raises(InvalidImageError, match=KINDS[special]):
        load_image(path)


async def test_a_huge_file_is_refused_by_its_size_without_reading_it(sparse_8gb: Path) -> None:
    async with SourceReader() as reader:
        with pytest.raises(SourceTooLargeError, match="8,589,934,592 bytes"):
            await reader.read(ImageSource("path", str(sparse_8gb), "huge"))
    with pytest.raises(InvalidImageError, match=r"huge\.png is 8,192\.0 MB; .* at most 50 MB"):
        load_image(sparse_8gb)


def test_a_huge_file_object_is_read_only_one_byte_past_the_cap() -> None:
    class Endless(io.RawIOBase):
        name = "endless.png"

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            assert size >= 0, "read everything from an endless file"
            return b"\x00" * size

    with pytest.raises(InvalidImageError, match=r"endless\.png is more than"):
        load_image(Endless())  # type: ignore[arg-type]


async def test_folders_skip_special_files_named_like_images(
    tmp_path: Path, fifo: Path, zero_link: Path
) -> None:
    (tmp_path / "real.png").write_bytes(png_bytes())
    sources = [s async for s in iter_sources(tmp_path)]
    assert [Path(s.location).name for s in sources] == ["real.png"]


@pytest.mark.parametrize("how", ["folder", "glob", "glob-literal"])
async def test_an_image_name_whose_file_cannot_be_looked_at_is_listed_to_fail_as_a_job(
    tmp_path: Path, how: str
) -> None:
    # a symbolic link loop named like an image (stat fails with ELOOP, as it would with
    # EIO on a bad disk) was skipped silently by listings, while naming it failed its job
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "self.png").symlink_to("self.png")
    (tmp_path / "sub" / "real.png").write_bytes(png_bytes())
    spec = {
        "folder": tmp_path,
        "glob": str(tmp_path / "*" / "*.png"),
        "glob-literal": str(tmp_path / "*" / "self.png"),
    }[how]
    sources = [s async for s in iter_sources(spec)]
    names = sorted(Path(s.location).name for s in sources)
    assert names == (["self.png"] if how == "glob-literal" else ["real.png", "self.png"])
    (looping,) = [s for s in sources if s.location.endswith("self.png")]
    with pytest.raises(SourceError, match="Too many levels of symbolic links"):
        await SourceReader().read(looping)


@pytest.fixture
def looped(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "a" / "b").mkdir(parents=True)
    (root / "one.png").write_bytes(png_bytes())
    (root / "a" / "two.png").write_bytes(png_bytes())
    (root / "a" / "b" / "three.png").write_bytes(png_bytes())
    (root / "a" / "b" / "up").symlink_to("../..")  # back to photos/
    (root / "self").symlink_to(".")
    (root / "a" / "again").symlink_to(root / "a")
    return root


async def test_a_folder_walk_never_loops_through_directory_symlinks(looped: Path) -> None:
    with anyio.fail_after(60):
        sources = [s async for s in iter_sources(looped)]
    names = sorted(Path(s.location).name for s in sources)
    assert names == ["one.png", "three.png", "two.png"]


async def test_a_glob_never_loops_through_directory_symlinks(looped: Path) -> None:
    with anyio.fail_after(60):
        sources = [s async for s in iter_sources(str(looped / "**" / "*.png"))]
    names = sorted(Path(s.location).name for s in sources)
    assert names == ["one.png", "three.png", "two.png"]


async def test_walks_and_globs_leave_out_an_earlier_batchs_output_below_them(
    tmp_path: Path,
) -> None:
    # `photoroom-bg remove photos -o photos/cut`, then `... -o elsewhere`: the second walk of
    # photos/ took the first run's cut-outs for photos and paid for a cut-out of each
    root = tmp_path / "photos"
    (root / "cut" / "deeper").mkdir(parents=True)
    (root / "one.png").write_bytes(png_bytes())
    (root / "cut" / "one-1b98542ad850.png").write_bytes(png_bytes())
    (root / "cut" / "deeper" / "two.png").write_bytes(png_bytes())
    (root / "cut" / OUTPUT_MARKER).write_text("")

    async def names(spec: str) -> list[str]:
        with anyio.fail_after(60):
            return sorted([Path(s.location).name async for s in iter_sources(spec)])

    assert await names(str(root)) == ["one.png"]
    assert await names(str(root / "**" / "*.png")) == ["one.png"]
    assert await names(str(root / "*" / "*.png")) == []
    assert await names(str(root / "*" / "deeper" / "*.png")) == []
    # the output folder named itself is walked: its owner asked for it
    assert await names(str(root / "cut")) == ["one-1b98542ad850.png", "two.png"]
    assert await names(str(root / "cut" / "**" / "*.png")) == ["one-1b98542ad850.png", "two.png"]
    assert await names(str(root / "cut" / "*.png")) == ["one-1b98542ad850.png"]
    assert await names(str(root / "cut" / "deeper" / "*.png")) == ["two.png"]


async def test_globs_keep_their_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x" / ".hidden").mkdir(parents=True)
    for name in ["x/a.png", "x/b.jpg", "x/.c.png", "x/.hidden/d.png", "e.png"]:
        (tmp_path / name).write_bytes(png_bytes())
    monkeypatch.chdir(tmp_path)

    async def matched(pattern: str) -> list[str]:
        return sorted([s.location async for s in iter_sources(pattern)])

    assert await matched("x/*.png") == ["x/a.png"]
    assert await matched("**/*.png") == ["e.png", "x/a.png"]
    assert await matched("x/.*.png") == ["x/.c.png"]
    assert await matched(str(tmp_path / "x" / "?.jpg")) == [str(tmp_path / "x" / "b.jpg")]
    assert await matched("x/[ab].*") == ["x/a.png", "x/b.jpg"]


async def test_listing_stops_when_its_consumer_is_cancelled(
    looped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photoroom_bg import _listing, sources

    blocked, release, finished = threading.Event(), threading.Event(), threading.Event()
    listed: list[str] = []
    real_scandir, real_walk = _listing._scandir, sources.walk_images

    def slow_scandir(folder: str) -> list[os.DirEntry[str]]:
        listed.append(folder)
        if len(listed) == 1:  # a first folder that takes forever, like a hung network share
            blocked.set()
            release.wait(30)
        return real_scandir(folder)

    def walk(root: str, stop: threading.Event, *rest: frozenset[str]) -> Iterator[str]:
        try:
            yield from real_walk(root, stop, *rest)
        finally:
            finished.set()

    monkeypatch.setattr(_listing, "_scandir", slow_scandir)
    monkeypatch.setattr(sources, "walk_images", walk)

    async def consume() -> None:
        async for _ in iter_sources(looped):
            pass

    task = asyncio.create_task(consume())
    with anyio.fail_after(30):
        while not blocked.is_set():
            await asyncio.sleep(0.01)
    task.cancel()
    with anyio.fail_after(5):
        await asyncio.wait([task])
    assert task.cancelled()
    release.set()
    with anyio.fail_after(30):
        while not finished.is_set():
            await asyncio.sleep(0.01)
    assert listed == [str(looped)]  # told to stop, it listed no other folder


@pytest.fixture
def undecodable(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9-\xff.png")  # Latin-1 bytes: not UTF-8
    (folder / name).write_bytes(png_bytes())
    return folder


async def test_names_that_are_not_utf8_can_be_shown_read_and_recorded(undecodable: Path) -> None:
    from photoroom_bg.batch import JobResult, JobStatus
    from photoroom_bg.batch._manifest import Manifest

    [source] = [s async for s in iter_sources(undecodable)]
    assert source.display.endswith("caf\\xe9-\\xff.png")
    assert source.name == "caf\\xe9-\\xff"
    source.display.encode("utf-8")  # no lone surrogates left
    repr(source).encode("utf-8")
    async with SourceReader() as reader:
        assert await reader.read(source) == png_bytes()
    manifest = Manifest(undecodable / "manifest.jsonl")
    manifest.open()
    manifest.write(
        JobResult(0, source.display, source.name, JobStatus.FAILED),
        engine="e",
        options_digest="d",
    )
    manifest.finish()
    failures: list[Exception] = []
    await manifest.writer(failures.append)
    manifest.close()
    assert failures == []
    [line] = (undecodable / "manifest.jsonl").read_text("utf-8").splitlines()
    assert json.loads(line)["name"] == "caf\\xe9-\\xff"


def test_client_messages_name_the_input_not_a_python_object() -> None:
    handle = io.BytesIO(b"\xff\xd8\xff" + b"garbage" * 10)  # Pillow cannot identify it
    data, name = load_image(handle)
    with pytest.raises(InvalidImageError) as caught:
        validate_image(data, "segment", name=name)
    assert "object at 0x" not in str(caught.value)
    assert str(caught.value).startswith("image is corrupt or truncated")
    named = io.BytesIO(data)
    named.name = "/photos/shoe.png"
    data, name = load_image(named)
    with pytest.raises(InvalidImageError, match=r"^shoe\.png is corrupt"):
        validate_image(data, "segment", name=name)


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (50 * 1024 * 1024 + 8, "is 52,428,808 bytes; "),  # 50.0 MB would hide the difference
        (int(50.3 * 1024 * 1024), "is 50.3 MB; "),
    ],
)
def test_size_messages_show_numbers_that_differ(size: int, shown: str) -> None:
    with pytest.raises(InvalidImageError) as caught:
        validate_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * (size - 8), "segment", name="big.png")
    message = str(caught.value)
    assert shown in message
    assert "at most 50 MB (52,428,800 bytes)" in message


@respx.mock
async def test_a_jpeg_named_png_is_sent_as_the_jpeg_it_is(tmp_path: Path) -> None:
    path = tmp_path / "shoe.png"
    path.write_bytes(jpeg_bytes())
    route = respx.post("https://sdk.photoroom.com/v1/segment").mock(
        return_value=httpx.Response(200, content=png_bytes(), headers={"x-uncertainty-score": "0"})
    )
    async with AsyncPhotoroomClient(api_key="sk_test_local", max_retries=0) as client:
        result = await client.remove_background(path)
    assert result.content == png_bytes()
    body = route.calls.last.request.content
    assert b'filename="shoe.png"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8' in body


@pytest.mark.parametrize("special", ["fifo", "zero_link"])
@respx.mock
async def test_the_client_sends_nothing_for_a_special_file(
    special: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(special)
    route = respx.post("https://sdk.photoroom.com/v1/segment")
    async with AsyncPhotoroomClient(api_key="sk_test_local", max_retries=0) as client:
        with anyio.fail_after(30), pytest.raises(InvalidImageError):
            await client.remove_background(path)
    assert not route.called


async def test_small_files_are_read_in_place_and_large_ones_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photoroom_bg._threads import QUICK_BYTES

    small, large = tmp_path / "small.png", tmp_path / "large.png"
    small.write_bytes(png_bytes())
    large.write_bytes(png_bytes() + b"\0" * QUICK_BYTES)
    read_in: list[threading.Thread] = []
    real_fstat = os.fstat

    def fstat(fd: int) -> os.stat_result:  # of the file opened for reading
        read_in.append(threading.current_thread())
        return real_fstat(fd)

    monkeypatch.setattr(os, "fstat", fstat)
    reader = SourceReader()
    assert await reader.read(ImageSource("path", str(small), "small")) == small.read_bytes()
    assert [t is threading.current_thread() for t in read_in] == [True]
    read_in.clear()
    assert await reader.read(ImageSource("path", str(large), "large")) == large.read_bytes()
    # sized up in place, then opened again and read in a worker thread
    assert [t is threading.current_thread() for t in read_in] == [True, False]
