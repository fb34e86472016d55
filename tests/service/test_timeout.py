"""The service's Photoroom timeout: an operator's setting, honoured by every endpoint and
named by the problem a timed-out call answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from photoroom_bg.errors import ConfigurationError
from photoroom_bg.service import ServiceSettings
from photoroom_bg.testing import Faults, PhotoroomEmulator

from .live import API_KEY, ImageServer, service_env, start_service
from .test_endpoints import wait_for_job


def test_settings_read_the_timeout_the_client_reads() -> None:
    assert ServiceSettings.from_env({}).timeout == 120.0
    assert ServiceSettings.from_env({"PHOTOROOM_TIMEOUT": "300"}).timeout == 300.0
    assert ServiceSettings.from_env({"PHOTOROOM_TIMEOUT": "none"}).timeout == float("inf")
    for bad in ("0", "-2", "nan", "soon"):
        with pytest.raises(ConfigurationError, match=r"PHOTOROOM_TIMEOUT|timeout must be"):
            ServiceSettings.from_env({"PHOTOROOM_TIMEOUT": bad})


def test_a_timed_out_call_is_a_504_naming_the_operators_setting(
    tmp_path: Path, images: ImageServer
) -> None:
    # every call waited 120 s, whatever the operator needed, and the answer advised raising
    # "the client's timeout", which a service has no way to set
    emulator = PhotoroomEmulator([API_KEY], credits=100, faults=Faults(latency=1.0))
    with emulator.serve():
        assert emulator.url is not None
        env = service_env(
            emulator_url=emulator.url,
            sink=str(tmp_path / "sink"),
            state_dir=tmp_path / "state",
            max_retries="0",
        )
        env["PHOTOROOM_TIMEOUT"] = "0.3"
        service = start_service(env, tmp_path / "service.log")
        try:
            with service.client() as client:
                one = client.post("/api/v1/remove-background", json={"image_url": images.image(1)})
                job = client.post(
                    "/api/v2/remove-backgrounds", json={"image_urls": [images.image(2)]}
                )
                assert job.status_code == 202, job.text
                [item] = wait_for_job(client, job.json()["job_id"])["items"]
        finally:
            service.stop()
    assert one.status_code == 504, one.text
    assert one.json()["code"] == "photoroom_timeout"
    assert item["error"]["code"] == "photoroom_timeout"
    for told in (one.json()["detail"], item["error"]["message"]):
        assert "PHOTOROOM_TIMEOUT=<seconds>" in told
