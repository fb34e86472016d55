"""Each sink behind one fixture, so the contract tests run against all three."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from photoroom_bg.sinks import FileSystemSink, MemorySink, S3Sink, Sink

from ..s3server import S3Server


@pytest.fixture(params=["memory", "filesystem", "s3"])
async def sink(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sink]:
    """A fresh, empty sink of each kind."""
    made: Sink
    if request.param == "memory":
        made = MemorySink()
    elif request.param == "filesystem":
        made = FileSystemSink(tmp_path / "out")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        prefix: str = request.getfixturevalue("s3_prefix")
        made = S3Sink(prefix, **server.sink_options())
    yield made
    await made.aclose()


async def fetch(url: str, sink: Sink) -> bytes:
    """Fetch what a sink's URL points at, the way a user would."""
    if url.startswith("file://"):
        return Path(httpx.URL(url).path).read_bytes()
    if url.startswith("memory://"):
        assert isinstance(sink, MemorySink)
        from urllib.parse import unquote

        return await sink.get(unquote(url[len("memory://") :]))
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
        response.raise_for_status()
        return response.content
