"""Fixtures for the offline engine: the example photographs and one shared engine."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from photoroom_bg.engines.local import LocalEngine

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"

Box = tuple[float, float, float, float]

#: Hand-drawn boxes (left, top, right, bottom as fractions of width and height) inside each
#: photograph's subject, and over plain background along its border.
SUBJECT_AND_BACKGROUND: dict[str, tuple[Box, list[Box]]] = {
    "astronaut": ((0.30, 0.15, 0.60, 0.75), [(0.0, 0.0, 0.25, 0.30), (0.62, 0.0, 1.0, 0.30)]),
    "camera": ((0.05, 0.35, 0.30, 0.80), [(0.55, 0.0, 1.0, 0.25), (0.80, 0.50, 1.0, 0.75)]),
    "chelsea": ((0.15, 0.10, 0.70, 0.90), [(0.90, 0.35, 1.0, 1.0)]),
    "coffee": ((0.35, 0.20, 0.65, 0.70), [(0.0, 0.0, 0.20, 0.30), (0.85, 0.60, 1.0, 1.0)]),
    "rocket": ((0.485, 0.35, 0.515, 0.80), [(0.0, 0.0, 0.40, 1.0), (0.60, 0.0, 1.0, 1.0)]),
}


@pytest.fixture(scope="session")
def example() -> Callable[[str], bytes]:
    """Read ``examples/images/<name>.jpg``."""

    def read(name: str) -> bytes:
        return (EXAMPLES / f"{name}.jpg").read_bytes()

    return read


@pytest.fixture(scope="session")
def subject_and_background() -> dict[str, tuple[Box, list[Box]]]:
    """The hand-drawn subject and background boxes of each example photograph."""
    return SUBJECT_AND_BACKGROUND


@pytest.fixture(scope="session")
def engine() -> Iterator[LocalEngine]:
    """One engine with the bundled model, shared by the tests that only read from it."""
    shared = LocalEngine(max_workers=2)
    yield shared
    asyncio.run(shared.aclose())


@pytest.fixture
def empty_model_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point rembg's model folders (``U2NET_HOME``, ``REMBG_HOME``) at an empty folder."""
    home = tmp_path / "u2net"
    home.mkdir()
    monkeypatch.setenv("U2NET_HOME", str(home))
    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "rembg"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    return home
