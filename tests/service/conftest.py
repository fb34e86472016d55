"""Service fixtures: the emulator, a loopback image server, and the service as a real uvicorn
child process (one per module: tests in a module share it, jobs are per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from photoroom_bg.testing import PhotoroomEmulator

from .live import (
    API_KEY,
    ImageServer,
    ServiceProcess,
    image_server,
    merge_child_coverage,
    service_env,
    start_service,
)

pytest.importorskip("fastapi")


@pytest.fixture(scope="session", autouse=True)
def _child_coverage() -> Iterator[None]:
    """The service runs in child processes: their coverage joins this run's at the end."""
    yield
    merge_child_coverage()


@pytest.fixture(scope="session")
def service_emulator() -> Iterator[PhotoroomEmulator]:
    """The emulator the services call, with a key that must never leak."""
    emulator = PhotoroomEmulator({API_KEY: 1_000_000})
    with emulator.serve():
        yield emulator


@pytest.fixture(scope="session")
def images() -> Iterator[ImageServer]:
    with image_server() as server:
        yield server


@pytest.fixture(scope="module")
def service(
    service_emulator: PhotoroomEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A service with two tokens, a folder sink and small caps (3 URLs per request, 40
    images per job, 2 jobs per token, 1 MB bodies)."""
    root: Path = tmp_path_factory.mktemp("service")
    assert service_emulator.url is not None
    env = service_env(
        emulator_url=service_emulator.url,
        sink=str(root / "sink"),
        state_dir=root / "state",
        max_urls_per_request="3",
        max_images_per_job="40",
        max_jobs_per_token="2",
        max_body_bytes=str(1024 * 1024),
        max_source_bytes="200000",
    )
    process = start_service(env, root / "service.log")
    try:
        yield process
    finally:
        process.stop()
