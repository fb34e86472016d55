"""Batch fixtures: an emulator on loopback and unique product photos."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator

import pytest
from PIL import Image, ImageDraw

from photoroom_bg.testing import PhotoroomEmulator

_counter = itertools.count()


def photo() -> bytes:
    """A product photo whose bytes no other call in the session sends."""
    n = next(_counter)
    image = Image.new("RGB", (48 + n % 32, 36 + n // 32 % 32), "white")
    ImageDraw.Draw(image).rectangle([10, 8, 30, 24], fill=(n % 200 + 30, 20, 20))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def emulator() -> Iterator[PhotoroomEmulator]:
    """A fresh emulator (10,000 credits) per test, so its ledger is the test's own."""
    emu = PhotoroomEmulator(credits=10_000)
    with emu.serve():
        yield emu
