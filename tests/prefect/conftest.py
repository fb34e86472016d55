"""Prefect fixtures: quiet loopback-only settings, an ephemeral Prefect API, an emulator, photos.

Prefect reads its settings when it is first imported, so the environment is set here, before
anything imports it: no analytics, no UI, a throwaway PREFECT_HOME.
"""

from __future__ import annotations

import atexit
import gc
import io
import itertools
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from PIL import Image, ImageDraw

from photoroom_bg.testing import PhotoroomEmulator

from ..conftest import FOREIGN_CLIENT_PORTS

#: Settings that keep Prefect (server, workers, client) on this machine and quiet.
QUIET_PREFECT = {
    "DO_NOT_TRACK": "1",  # the SDK's own usage events
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # the server's telemetry heartbeat
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_CLI_PROMPT": "false",
}

_HOME = tempfile.mkdtemp(prefix="photoroom-bg-prefect-home-")
# Run by their path, these tests load this file before the session's own temporary folder
# exists, so _HOME may be in the user's: removed at exit, after what Prefect cleans then
# (exit callbacks run last registered first)
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ.update(QUIET_PREFECT)
os.environ["PREFECT_HOME"] = _HOME
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("PREFECT_API_KEY", None)

_counter = itertools.count()


def photo_bytes() -> bytes:
    """A product photo no other call in the session makes."""
    n = next(_counter)
    image = Image.new("RGB", (40 + n % 40, 30 + n // 40 % 40), "white")
    ImageDraw.Draw(image).rectangle([8, 6, 24, 20], fill=(n % 200 + 30, 40, 40))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def photo_folder(root: Path, count: int) -> Path:
    """A folder of ``count`` distinct photos."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"photo-{i:04d}.png").write_bytes(photo_bytes())
    return root


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """An ephemeral Prefect API (a loopback server process over a temporary SQLite file)."""
    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    try:
        with prefect_test_harness(server_startup_timeout=180):
            port = urlsplit(str(prefect.settings.PREFECT_API_URL.value())).port
            assert port is not None
            FOREIGN_CLIENT_PORTS.add(port)
            yield
    finally:
        shutil.rmtree(_HOME, ignore_errors=True)


_TRANSPORT_WARNING = "unclosed transport <_SelectorSocketTransport"


@pytest.fixture(autouse=True)
def _prefects_transports() -> Iterator[None]:
    """The asyncio transports under those sockets (see ``FOREIGN_CLIENT_PORTS``) warn too,
    with no address to tell them apart: here, among Prefect's own, they are not errors.

    What a test leaves for the garbage collector is collected before the next test begins,
    here, so that a transport Prefect dropped is not found later, during a test elsewhere,
    where an unclosed transport is an error."""
    warnings.filterwarnings("ignore", message=_TRANSPORT_WARNING, category=ResourceWarning)
    yield
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TRANSPORT_WARNING, category=ResourceWarning)
        for port in FOREIGN_CLIENT_PORTS:  # Prefect's sockets only: ours stay errors
            warnings.filterwarnings(
                "ignore",
                message=rf"unclosed <socket\.socket .*raddr=\('127\.0\.0\.1', {port}\)>",
                category=ResourceWarning,
            )
        gc.collect()


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[PhotoroomEmulator]:
    """A fresh emulator; workers in this process find it (and its key) in the environment."""
    emu = PhotoroomEmulator(credits=10_000)
    with emu.serve() as url:
        monkeypatch.setenv("PHOTOROOM_BASE_URL", url)
        monkeypatch.setenv("PHOTOROOM_API_KEY", emu.api_key)
        yield emu
