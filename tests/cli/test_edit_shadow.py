"""``photoroom-bg edit --shadow``: every offered shadow mode can actually be sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from photoroom_bg.cli import main
from photoroom_bg.testing import PhotoroomEmulator

from ..batch.conftest import photo


@pytest.fixture
def emulator() -> Iterator[PhotoroomEmulator]:
    emu = PhotoroomEmulator(credits=1000, image_work=False)
    with emu.serve():
        yield emu


def _edit(emulator: PhotoroomEmulator, tmp_path: Path, *flags: str) -> tuple[int, str]:
    source = tmp_path / "shoe.png"
    source.write_bytes(photo())
    args = ["edit", str(source), "-o", str(tmp_path / "out"), "--base-url", emulator.url, "-q"]
    result = CliRunner().invoke(main, [*args, *flags], env={"PHOTOROOM_API_KEY": emulator.api_key})
    return result.exit_code, result.output + result.stderr


@pytest.mark.parametrize("mode", ["ai.preset-soft", "ai.preset-hard", "ai.auto-with-overrides"])
def test_the_new_shadow_modes_run_with_the_model_flag(
    emulator: PhotoroomEmulator, tmp_path: Path, mode: str
) -> None:
    # the emulator refuses these modes unless pr-ai-shadows-model-version: 2026-04-15 is sent
    code, output = _edit(emulator, tmp_path, "--shadow", mode, "--shadow-model", "2026-04-15")
    assert code == 0, output
    (request,) = [r for r in emulator.requests if r.path == "/v2/edit"]
    assert (request.status, request.params["shadow.mode"]) == (200, mode)


def test_a_new_shadow_mode_without_the_model_is_a_usage_error(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    code, output = _edit(emulator, tmp_path, "--shadow", "ai.preset-soft")
    assert code == 2
    assert "pr-ai-shadows-model-version: 2026-04-15" in output
    assert emulator.requests == []  # nothing sent, nothing billed


def test_a_legacy_shadow_mode_with_the_new_model_is_a_usage_error(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    code, output = _edit(
        emulator, tmp_path, "--shadow", "ai.floating", "--shadow-model", "2026-04-15"
    )
    assert code == 2
    assert "shadow.mode:legacy-model" in output
