"""Fixtures for driving the photoroom-bg command as a user does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from photoroom_bg.cli import main
from photoroom_bg.testing import PhotoroomEmulator

from ..batch.conftest import photo

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"


@pytest.fixture
def emulator() -> Iterator[PhotoroomEmulator]:
    """An emulator on loopback that answers fast (no image work)."""
    emu = PhotoroomEmulator(credits=1000, image_work=False)
    with emu.serve():
        yield emu


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """``tmp_path/in`` with six distinct product photos."""
    source = tmp_path / "in"
    source.mkdir()
    for i in range(6):
        (source / f"p{i}.png").write_bytes(photo())
    return source


def run(*args: str, key: str | None = None, stdin: str | None = None) -> Result:
    """Invoke the command in-process with ``PHOTOROOM_API_KEY`` set to ``key`` (or unset)."""
    env = {"PHOTOROOM_API_KEY": key} if key else {"PHOTOROOM_API_KEY": ""}
    return CliRunner().invoke(main, list(args), env=env, input=stdin)


def outputs(dest: Path) -> list[Path]:
    """The files in ``dest``, without the manifest."""
    return sorted(p for p in dest.iterdir() if not p.name.startswith("."))


def tree(root: Path) -> set[str]:
    """Every path below ``root``, to show a command created nothing."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}
