"""The pytest plugin: the photoroom_emulator fixture and its marker."""

from __future__ import annotations

import pytest

from photoroom_bg.errors import OutOfCreditsError
from photoroom_bg.testing import PhotoroomEmulator

from .conftest import product_photo


def test_the_fixture_serves_a_configured_emulator(photoroom_emulator: PhotoroomEmulator) -> None:
    assert photoroom_emulator.url is not None
    assert photoroom_emulator.url.startswith("http://127.0.0.1:")
    with photoroom_emulator.client() as client:
        client.remove_background(product_photo())
    assert photoroom_emulator.ledger.calls() == 1


@pytest.mark.photoroom_emulator(credits=1)
async def test_the_marker_configures_it(photoroom_emulator: PhotoroomEmulator) -> None:
    async with photoroom_emulator.async_client() as client:
        await client.remove_background(product_photo())
        with pytest.raises(OutOfCreditsError):
            await client.remove_background(product_photo())


def test_clients_need_a_running_emulator() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        PhotoroomEmulator().client()


def test_the_command_runs_and_stops(tmp_path: object) -> None:
    import signal
    import subprocess
    import sys

    import httpx

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "photoroom_bg.testing",
            "--port",
            "0",
            "--key",
            "k",
            "--latency",
            "10ms",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        url = line.split("listening on ")[1].split()[0]
        answer = httpx.get(f"{url}/v2/account", headers={"x-api-key": "k"})
        assert answer.json()["images"]["available"] == 1000
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert process.stdout is not None
        process.stdout.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault", "meltdown:0.5"], "unknown fault 'meltdown'"),
        (["--fault", "503:often"], "bad probability"),
        (["--fault", "503:1.5"], "Error: fault probability 503=1.5 is not within 0..1"),
        (["--latency", "soon"], "--latency"),
    ],
)
def test_the_command_refuses_bad_arguments_with_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from photoroom_bg.testing._cli import run_emulator

    code = run_emulator(args)
    assert code == 2
    assert message in capsys.readouterr().err
