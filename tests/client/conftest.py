"""Fixtures for the client tests: both twins behind one awaitable interface."""

from __future__ import annotations

import email
import inspect
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from photoroom_bg import AsyncPhotoroomClient, PhotoroomClient, RetryPolicy

API_KEY = "sk_live_0123456789abcdefSECRET"
SEGMENT = "https://sdk.photoroom.com/v1/segment"
EDIT = "https://image-api.photoroom.com/v2/edit"
ACCOUNT = "https://image-api.photoroom.com/v2/account"


def png(width: int = 8, height: int = 6, color: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    """A real PNG image of the given size."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


#: a whole cut-out, as the answers of the mocked API carry (the client refuses an answer
#: that is not a whole image)
CUTOUT = png(3, 2, (0, 0, 0))


def jpeg(width: int = 8, height: int = 6) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 10)).save(out, format="JPEG")
    return out.getvalue()


class Twin:
    """Calls a sync or an async client the same way (``await twin.call(...)``)."""

    def __init__(self, client: PhotoroomClient | AsyncPhotoroomClient) -> None:
        self.client = client
        self.sleeps: list[float] = []
        if isinstance(client, AsyncPhotoroomClient):

            async def record(seconds: float) -> None:
                self.sleeps.append(seconds)

            client._sleep = record  # type: ignore[method-assign]
        else:
            client._sleep = self.sleeps.append  # type: ignore[method-assign]

    @property
    def is_async(self) -> bool:
        return isinstance(self.client, AsyncPhotoroomClient)

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, method)(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def close(self) -> None:
        if isinstance(self.client, AsyncPhotoroomClient):
            await self.client.aclose()
        else:
            self.client.close()


def make_twin(kind: str, **kwargs: Any) -> Twin:
    kwargs.setdefault("api_key", API_KEY)
    kwargs.setdefault("retry_policy", RetryPolicy(initial_delay=0.01, max_delay=0.05))
    cls = AsyncPhotoroomClient if kind == "async" else PhotoroomClient
    return Twin(cls(**kwargs))


@pytest.fixture(params=["sync", "async"])
async def twin(request: pytest.FixtureRequest) -> AsyncIterator[Twin]:
    """A client of each kind with the test key and instant retries."""
    made = make_twin(request.param)
    yield made
    await made.close()


def multipart_fields(request: httpx.Request) -> dict[str, tuple[str | None, bytes]]:
    """Parse a sent multipart body into ``{field: (filename, payload)}``."""
    content_type = request.headers["content-type"]
    raw = b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + request.content
    message = email.message_from_bytes(raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.get_payload():  # type: ignore[union-attr]
        name = part.get_param("name", header="content-disposition")
        filename = part.get_param("filename", header="content-disposition")
        fields[str(name)] = (filename, part.get_payload(decode=True))
    return fields


def text_fields(request: httpx.Request) -> dict[str, str]:
    """The non-file multipart fields of a request, decoded."""
    return {
        name: payload.decode()
        for name, (filename, payload) in multipart_fields(request).items()
        if filename is None
    }
