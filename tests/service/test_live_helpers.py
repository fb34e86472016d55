"""The helper that starts the service for the tests must start it wherever the suite runs."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from photoroom_bg.testing import PhotoroomEmulator

from ..loopback import PortTaken, taken_first
from . import live


def test_a_port_taken_between_choosing_and_binding_it_gets_a_new_start_on_another(
    service_emulator: PhotoroomEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert service_emulator.url is not None
    env = live.service_env(
        emulator_url=service_emulator.url, sink=str(tmp_path / "sink"), state_dir=tmp_path / "st"
    )
    with taken_first(live.free_port) as (first_one_taken, chosen):
        monkeypatch.setattr(live, "free_port", first_one_taken)
        service = live.start_service(env, tmp_path / "service.log")
        try:
            assert len(chosen) == 2
            assert service.url == f"http://127.0.0.1:{chosen[1]}"
            assert httpx.get(f"{service.url}/health", timeout=10).status_code == 200
            assert "address already in use" in service.log_text()
        finally:
            service.stop()


def test_a_port_asked_for_by_the_caller_is_not_swapped_for_another(
    service_emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    assert service_emulator.url is not None
    env = live.service_env(
        emulator_url=service_emulator.url, sink=str(tmp_path / "sink"), state_dir=tmp_path / "st"
    )
    with (
        taken_first(live.free_port) as (choose, _),
        pytest.raises(PortTaken, match="address already in use"),
    ):
        live.start_service(env, tmp_path / "service.log", port=choose())
