"""Emulator fixtures: a running emulator, both SDK clients pointed at it, test images."""

from __future__ import annotations

import inspect
import io
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from PIL import Image, ImageDraw

from photoroom_bg import AsyncPhotoroomClient, PhotoroomClient, RetryPolicy
from photoroom_bg.testing import PhotoroomEmulator

FAST_RETRIES = RetryPolicy(initial_delay=0.01, max_delay=0.02, max_retry_after=0.05)


def product_photo(size: tuple[int, int] = (80, 60), fmt: str = "PNG") -> bytes:
    """A white studio background with a red product in the middle."""
    image = Image.new("RGB", size, "white")
    w, h = size
    ImageDraw.Draw(image).rectangle([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=(200, 20, 20))
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


_counter = itertools.count()


def unique_photo() -> bytes:
    """A product photo no other call in this test session sends (its bytes differ)."""
    return product_photo((60 + next(_counter), 50))


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


class Twin:
    """Calls a sync or an async client the same way."""

    def __init__(self, client: PhotoroomClient | AsyncPhotoroomClient) -> None:
        self.client = client

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, method)(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    async def close(self) -> None:
        if isinstance(self.client, AsyncPhotoroomClient):
            await self.client.aclose()
        else:
            self.client.close()


@pytest.fixture(scope="module")
def emulator() -> Iterator[PhotoroomEmulator]:
    """One running emulator per module (1,000,000 credits, no faults)."""
    emu = PhotoroomEmulator(["key-one", "key-two"], credits=1_000_000)
    with emu.serve():
        yield emu


@pytest.fixture(params=["sync", "async"])
async def twin(request: pytest.FixtureRequest, emulator: PhotoroomEmulator) -> AsyncIterator[Twin]:
    """A client of each kind, over real sockets to the emulator."""
    factory = emulator.async_client if request.param == "async" else emulator.client
    made = Twin(factory(api_key="key-one", retry_policy=FAST_RETRIES))
    yield made
    await made.close()
