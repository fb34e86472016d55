"""The helper that starts a Prefect server for the tests must start it wherever they run."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ..loopback import taken_first
from . import fleet

pytestmark = pytest.mark.slow


def test_a_port_taken_between_choosing_and_binding_it_gets_a_new_start_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with taken_first(fleet.free_port) as (first_one_taken, chosen):
        monkeypatch.setattr(fleet, "free_port", first_one_taken)
        with fleet.prefect_server(tmp_path / "prefect") as started:
            assert len(chosen) == 2
            assert started.api_url == f"http://127.0.0.1:{chosen[1]}/api"
            assert httpx.get(f"{started.api_url}/health", timeout=10).json() is True
