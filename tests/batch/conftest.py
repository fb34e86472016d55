"""Batch fixtures: an emulator on loopback and unique product photos."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from photoroom_bg import BatchRemover, RetryPolicy
from photoroom_bg.testing import PhotoroomEmulator

#: retries that do not make a test wait
FAST = RetryPolicy(initial_delay=0.005, max_delay=0.05)

_counter = itertools.count()


def photo() -> bytes:
    """A product photo whose bytes no other call in the session sends."""
    n = next(_counter)
    image = Image.new("RGB", (48 + n % 32, 36 + n // 32 % 32), "white")
    ImageDraw.Draw(image).rectangle([10, 8, 30, 24], fill=(n % 200 + 30, 20, 20))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def photo_folder(tmp_path: Path, count: int) -> tuple[Path, dict[str, bytes]]:
    """A folder ``in`` of ``count`` distinct photos, and the photos by file name."""
    source = tmp_path / "in"
    source.mkdir()
    images = {f"img{i:03d}.png": photo() for i in range(count)}
    for name, data in images.items():
        (source / name).write_bytes(data)
    return source, images


@pytest.fixture
def emulator() -> Iterator[PhotoroomEmulator]:
    """A fresh emulator (10,000 credits) per test, so its ledger is the test's own."""
    emu = PhotoroomEmulator(credits=10_000)
    with emu.serve():
        yield emu


def job_records(path: Path) -> list[dict[str, Any]]:
    """The job records of a manifest (not the run headers), skipping a torn last line."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a kill can tear the last line
            record = json.loads(line)
            if "status" in record:
                records.append(record)
    return records


def wait_for_jobs(child: subprocess.Popen[Any], manifest: Path, count: int) -> None:
    """Poll until a running child process's manifest records ``count`` jobs."""
    deadline = time.monotonic() + 60
    while len(job_records(manifest)) < count and child.poll() is None:
        assert time.monotonic() < deadline, "the child made no progress"
        time.sleep(0.01)


def remover(emulator: PhotoroomEmulator, sink: Any, **kwargs: Any) -> BatchRemover:
    """A BatchRemover pointed at ``emulator``: no rate budget, fast retries, no account calls."""
    kwargs.setdefault("requests_per_minute", None)
    kwargs.setdefault("retry_policy", FAST)
    kwargs.setdefault("track_credits", False)
    return BatchRemover(sink=sink, api_key=emulator.api_key, base_url=emulator.url, **kwargs)
