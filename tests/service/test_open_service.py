"""A service without tokens on loopback: everyone is the same anonymous caller, the service's
own rate limit still applies, and CORS stays off unless configured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from photoroom_bg.testing import PhotoroomEmulator

from .live import ImageServer, ServiceProcess, service_env, start_service


@pytest.fixture(scope="module")
def open_service(
    service_emulator: PhotoroomEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    root: Path = tmp_path_factory.mktemp("open-service")
    assert service_emulator.url is not None
    env = service_env(
        emulator_url=service_emulator.url,
        sink=str(root / "sink"),
        state_dir=root / "state",
        tokens="",
        requests_per_minute_per_token="6",
    )
    process = start_service(env, root / "service.log")
    try:
        yield process
    finally:
        process.stop()


def test_without_tokens_the_service_answers_anonymous_callers_until_its_rate_limit(
    open_service: ServiceProcess, images: ImageServer
) -> None:
    with open_service.client(None) as client:
        assert client.get("/").json()["auth_required"] is False
        job = client.post("/api/v2/remove-backgrounds", json={"image_urls": [images.image(80)]})
        assert job.status_code == 202, job.text
        answers = [client.get(job.json()["status_url"]) for _ in range(6)]
    assert [a.status_code for a in answers[:5]] == [200] * 5
    limited = answers[5]
    assert limited.status_code == 429
    assert limited.json()["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) > 0


def test_cors_is_off_by_default(open_service: ServiceProcess) -> None:
    preflight = httpx.options(
        open_service.url + "/api/v2/remove-backgrounds",
        headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
    plain = httpx.get(open_service.url + "/health", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in plain.headers
