"""Source expansion and reading: paths, folders, globs, bytes, files, iterables."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from photoroom_bg import _threads
from photoroom_bg.errors import SourceError, SourceNotFoundError, SourceTooLargeError
from photoroom_bg.sources import ImageSource, SourceReader, iter_sources

from .conftest import png_bytes


async def collect(spec: object, reader: SourceReader | None = None) -> list[ImageSource]:
    return [source async for source in iter_sources(spec, reader=reader)]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ["one.png", "two.JPG", "a/three.webp", "a/b/four.jpeg", "a/b/five.HEIC"]:
        (tmp_path / name).write_bytes(png_bytes())
    for name in ["notes.txt", "a/b/data.json", "a/.DS_Store"]:
        (tmp_path / name).write_text("x")
    return tmp_path


async def test_directories_are_walked_recursively_for_images_only(tree: Path) -> None:
    sources = await collect(tree)
    names = sorted(Path(s.location).relative_to(tree).as_posix() for s in sources)
    assert names == ["a/b/five.HEIC", "a/b/four.jpeg", "a/three.webp", "one.png", "two.JPG"]
    assert {s.kind for s in sources} == {"path"}
    assert sorted(s.name for s in sources) == ["five", "four", "one", "three", "two"]


async def test_globs_expand_and_plain_paths_pass_through(tree: Path) -> None:
    globbed = await collect(str(tree / "**" / "*.*"))
    assert sorted(Path(s.location).name for s in globbed) == [
        "five.HEIC",
        "four.jpeg",
        "one.png",
        "three.webp",
        "two.JPG",
    ]
    only_jpeg = await collect(str(tree / "**" / "*.jp*g"))
    assert [Path(s.location).name for s in only_jpeg] == ["four.jpeg"]
    missing = await collect(str(tree / "nope.png"))
    assert missing == [ImageSource("path", str(tree / "nope.png"), "nope")]


async def test_bytes_files_and_nested_iterables() -> None:
    data = png_bytes()
    handle = io.BytesIO(data)
    handle.name = "/photos/shoe.png"  # type: ignore[attr-defined]

    async def more() -> AsyncIterator[object]:
        yield "https://example.com/x/boot.jpg?sig=secret"
        yield [b"raw"]

    sources = await collect([data, handle, more()])
    assert [s.kind for s in sources] == ["bytes", "file", "url", "bytes"]
    assert sources[0].data == data
    assert sources[1].name == "shoe"
    assert sources[1].data == data
    assert sources[2].name == "boot"
    assert "secret" not in sources[2].display
    assert "secret" not in repr(sources[2])
    assert sources[0].name != sources[3].name


async def test_a_list_of_paths_is_checked_a_chunk_at_a_time(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each trip to a worker thread costs far more than the check it makes
    hops = 0
    run_sync = _threads.run_sync

    async def counting(func: Any, /, *args: Any) -> Any:
        nonlocal hops
        hops += 1
        return await run_sync(func, *args)

    monkeypatch.setattr(_threads, "run_sync", counting)
    files = [str(tree / "one.png"), tree / "two.JPG", str(tree / "nope.png")] * 200
    spec = [*files, str(tree / "a"), str(tree / "*.png"), "https://example.com/x.png", b"raw"]
    found = await collect(spec)
    assert [s.location for s in found[:600]] == [str(f) for f in files]
    assert {s.kind for s in found[:600]} == {"path"}
    walked = sorted(Path(s.location).name for s in found[600:603])
    assert walked == ["five.HEIC", "four.jpeg", "three.webp"]
    assert Path(found[603].location).name == "one.png"  # the glob
    assert [s.kind for s in found[604:]] == ["url", "bytes"]
    # 606 items in 3 chunks, then a hop per listing chunk of the folder and of the glob
    assert hops == 3 + 2


async def test_a_huge_generator_is_consumed_lazily() -> None:
    pulled = 0

    def endless() -> Iterator[str]:
        nonlocal pulled
        while True:
            pulled += 1
            yield f"https://example.com/{pulled}.png"

    taken = []
    async for source in iter_sources(endless()):
        taken.append(source)
        if len(taken) == 10:
            break
    assert pulled == 10


async def test_reading_paths_bytes_and_errors(tree: Path) -> None:
    async with SourceReader(max_bytes=1000) as reader:
        assert await reader.read(ImageSource("path", str(tree / "one.png"), "one")) == png_bytes()
        with pytest.raises(SourceNotFoundError, match="no such file"):
            await reader.read(ImageSource("path", str(tree / "gone.png"), "gone"))
        with pytest.raises(SourceError, match="is a directory"):
            await reader.read(ImageSource("path", str(tree / "a"), "a"))
        (tree / "huge.png").write_bytes(b"\x00" * 2000)
        with pytest.raises(SourceTooLargeError, match="limit is 1,000"):
            await reader.read(ImageSource("path", str(tree / "huge.png"), "huge"))
        with pytest.raises(SourceTooLargeError):
            await reader.read(ImageSource("bytes", "<bytes #1>", "x", b"\x00" * 2000))


async def test_a_nested_listing_that_breaks_off_fails_alone_without_leaking_its_url() -> None:
    def rows() -> Iterator[bytes]:
        yield png_bytes()
        raise RuntimeError("GET https://user:hunter2@127.0.0.1/page?sig=s3cret failed")

    first, broken, last = await collect([rows(), png_bytes(9)])
    assert first.data == png_bytes()
    assert last.data == png_bytes(9)
    async with SourceReader() as reader:
        with pytest.raises(SourceError, match="listing it stopped after 1 source") as caught:
            await reader.read(broken)
    assert "hunter2" not in str(caught.value)
    assert "s3cret" not in str(caught.value)


async def test_unknown_objects_are_refused() -> None:
    with pytest.raises(SourceError, match="not an image source: int"):
        await collect(42)
    # in a list, the item stands for itself and fails when read; the rest is listed
    bad, good = await collect([42, png_bytes()])
    assert good.data == png_bytes()
    async with SourceReader() as reader:
        with pytest.raises(SourceError, match="not an image source: int"):
            await reader.read(bad)
