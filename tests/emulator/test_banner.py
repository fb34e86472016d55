"""The emulator command prints the exact lines that point photoroom_bg at it."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from photoroom_bg import PhotoroomClient


def test_the_printed_export_lines_are_enough_to_use_the_emulator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "photoroom_bg.testing", "--port", "0", "--key", "my-key"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        exports: dict[str, str] = {}
        while len(exports) < 2:
            line = process.stdout.readline()
            assert line, "the emulator stopped before printing its export lines"
            if line.strip().startswith("export "):
                name, _, value = line.strip().removeprefix("export ").partition("=")
                exports[name] = value
        assert set(exports) == {"PHOTOROOM_BASE_URL", "PHOTOROOM_API_KEY"}
        assert exports["PHOTOROOM_API_KEY"] == "my-key"
        for name, value in exports.items():
            monkeypatch.setenv(name, value)
        with PhotoroomClient() as client:  # nothing but the environment
            assert client.account().images_available == 1000
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert process.stdout is not None
        process.stdout.close()
