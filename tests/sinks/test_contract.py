"""The Sink contract, for MemorySink, FileSystemSink and S3Sink (real SeaweedFS) alike."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from photoroom_bg.errors import ConfigurationError, ObjectNotFoundError, UnsafeKeyError
from photoroom_bg.sinks import Sink

from .conftest import fetch


async def test_round_trip_with_content_type_and_metadata(sink: Sink) -> None:
    stored = await sink.put(
        "a/b/cut.png", b"\x89PNG-1", content_type="image/png", metadata={"source": "shoe.jpg"}
    )
    assert stored.key == "a/b/cut.png"
    assert stored.size == 6
    assert stored.content_type == "image/png"
    assert stored.checksum
    assert stored.uri.split("://")[0] in ("memory", "file", "s3")
    assert await sink.get("a/b/cut.png") == b"\x89PNG-1"
    assert await fetch(stored.url, sink) == b"\x89PNG-1"


async def test_overwrite_replaces_the_object(sink: Sink) -> None:
    first = await sink.put("k.png", b"one")
    second = await sink.put("k.png", b"two!")
    assert await sink.get("k.png") == b"two!"
    assert second.size == 4
    assert first.checksum != second.checksum


async def test_missing_keys_exists_and_delete(sink: Sink) -> None:
    assert await sink.exists("nope.png") is False
    with pytest.raises(ObjectNotFoundError):
        await sink.get("nope.png")
    await sink.put("here.png", b"x")
    assert await sink.exists("here.png") is True
    await sink.delete("here.png")
    await sink.delete("here.png")  # deleting twice is fine
    assert await sink.exists("here.png") is False


async def test_two_hundred_concurrent_puts(sink: Sink) -> None:
    payloads = {f"batch/{i:03d}.png": f"image {i}".encode() for i in range(200)}
    stored = await asyncio.gather(*(sink.put(k, v) for k, v in payloads.items()))
    assert sorted(s.key for s in stored) == sorted(payloads)
    contents = await asyncio.gather(*(sink.get(k) for k in payloads))
    assert dict(zip(payloads, contents, strict=True)) == payloads


MALFORMED_KEYS = [
    "../escape.png",
    "a/../../b.png",
    "/etc/passwd",
    "a\\b.png",
    "nul\x00.png",
    "",
    "a//b",
    "\ud800.png",  # a lone surrogate: no UTF-8 for it, so no S3 key and no file name
    "a/\udcff.png",  # an undecodable file-name byte: a file name here, no S3 key
]


@pytest.mark.parametrize("key", MALFORMED_KEYS)
async def test_traversal_and_malformed_keys_are_refused(sink: Sink, key: str) -> None:
    with pytest.raises(UnsafeKeyError):
        await sink.put(key, b"x")


@pytest.mark.parametrize("key", MALFORMED_KEYS)
async def test_every_call_refuses_a_malformed_key_with_the_same_typed_error(
    sink: Sink, key: str
) -> None:
    # a lone surrogate raised UnicodeEncodeError out of put, exists, get and url, or was
    # "not found" by one sink and an encoding error for another
    for call in (sink.exists, sink.get, sink.url, sink.delete):
        with pytest.raises(UnsafeKeyError, match="key"):
            await call(key)


@pytest.mark.parametrize(
    "key", ["with space.png", "what?.png", "hash#1.png", "café/ünïcode 日本.png", "100%.png"]
)
async def test_odd_keys_round_trip_and_their_urls_fetch_the_right_object(
    sink: Sink, key: str
) -> None:
    decoy = key.split("?")[0].split("#")[0] or "decoy"
    if decoy != key:
        await sink.put(decoy, b"the wrong object")
    stored = await sink.put(key, f"right object for {key}".encode())
    assert await sink.get(key) == f"right object for {key}".encode()
    assert await fetch(stored.url, sink) == f"right object for {key}".encode()
    assert await fetch(await sink.url(key, expires=60), sink) == stored_bytes(key)


def stored_bytes(key: str) -> bytes:
    return f"right object for {key}".encode()


@pytest.mark.parametrize(
    "expires",
    [0, -1, float("nan"), float("inf"), "3600", True, timedelta(seconds=-5), 10**400],
    ids=["zero", "negative", "nan", "inf", "str", "bool", "negative-timedelta", "huge"],
)
async def test_every_sink_refuses_an_expiry_no_url_can_have(sink: Sink, expires: Any) -> None:
    # memory and file-system sinks took any value and S3 refused it: code tried on a
    # folder failed on the bucket
    await sink.put("k.png", b"x")
    with pytest.raises(ConfigurationError, match="expires"):
        await sink.url("k.png", expires=expires)
    assert await sink.url("k.png", expires=timedelta(minutes=5))
