"""The helper that starts a Prefect server for the tests must start it wherever they run."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from . import fleet

pytestmark = pytest.mark.slow


def test_a_port_taken_between_choosing_and_binding_it_gets_a_new_start_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen: list[int] = []
    choose = fleet.free_port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()

        def first_one_taken() -> int:
            # someone binds the first port chosen before the server does
            chosen.append(choose() if chosen else squatter.getsockname()[1])
            return chosen[-1]

        monkeypatch.setattr(fleet, "free_port", first_one_taken)
        with fleet.prefect_server(tmp_path / "prefect") as started:
            assert len(chosen) == 2
            assert started.api_url == f"http://127.0.0.1:{chosen[1]}/api"
            assert httpx.get(f"{started.api_url}/health", timeout=10).json() is True
