"""The service guide tells the truth: its curl examples run against a live service, and it
names every setting and every error code; every public name is in the API reference."""

from __future__ import annotations

import importlib
import inspect
import io
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from photoroom_bg.service import PROBLEM_CODES
from photoroom_bg.service._settings import ENVIRONMENT, FILE_VARIANTS

from ..test_docs import documented
from .live import ALICE, ImageServer, ServiceProcess

ROOT = Path(__file__).parents[2]
GUIDE = ROOT / "docs" / "guides" / "service.rst"


def console_commands(text: str) -> list[str]:
    """The ``$ `` commands of every ``console`` block, continuation lines joined."""
    commands: list[str] = []
    for block in re.findall(r"\.\. code-block:: console\n\n((?:    .*\n|\n)+)", text):
        current: list[str] = []
        for raw in block.splitlines():
            line = raw[4:]
            if current:
                current.append(line)
            elif line.startswith("$ "):
                current = [line[2:]]
            if current and not line.rstrip().endswith("\\"):
                commands.append("\n".join(current))
                current = []
    return commands


def test_the_curl_examples_run_against_a_live_service(
    service: ServiceProcess, images: ImageServer, tmp_path: Path
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    commands = console_commands(GUIDE.read_text())
    assert len(commands) >= 12
    assert all(c.startswith(("curl ", "JOB=$(curl ")) for c in commands), commands
    photos = tmp_path / "photos"
    photos.mkdir()
    for photo in (ROOT / "examples" / "images").glob("*.jpg"):
        shutil.copy(photo, photos / photo.name)
    env = {
        **os.environ,
        "SERVICE": service.url,
        "TOKEN": ALICE,
        "AUTH": f"Authorization: Bearer {ALICE}",
        "IMAGE_URL": images.image(70),
        "IMAGE_URL2": images.image(71),
    }
    script = "set -euo pipefail\n" + "\n".join(commands) + "\n"
    run = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr + run.stdout[-2000:]
    assert '"status":"ready"' in run.stdout
    assert '"code":"unsafe_url"' in run.stdout
    for name, kind, mode in (("cutout.png", "PNG", "RGBA"), ("rocket.webp", "WEBP", None)):
        with Image.open(tmp_path / name) as image:
            assert image.format == kind
            assert mode is None or image.mode == mode
    with Image.open(tmp_path / "first.png") as image:
        assert image.format == "PNG"
    for archive in ("cutouts.zip", "job.zip"):
        names = zipfile.ZipFile(io.BytesIO((tmp_path / archive).read_bytes())).namelist()
        assert "errors.json" in names
        assert len(names) >= 3


def test_the_guide_names_every_setting_and_error_code() -> None:
    text = GUIDE.read_text()
    for variable in [*ENVIRONMENT.values(), *FILE_VARIANTS.values()]:
        assert f"``{variable}``" in text, variable
    for _, code, _ in PROBLEM_CODES.values():
        assert f"``{code}``" in text, code
    for code in (
        "unauthorized",
        "rate_limited",
        "too_many_jobs",
        "body_too_large",
        "executor_unavailable",
    ):
        assert f"``{code}``" in text, code


def test_every_public_service_name_is_in_the_api_reference() -> None:
    module = importlib.import_module("photoroom_bg.service")
    names = documented()
    for name in module.__all__:
        assert name in names, f"photoroom_bg.service.{name} is missing from docs/api"
        obj = getattr(module, name)
        if not name.isupper():
            assert inspect.getdoc(obj), name
