"""The service with ``PHOTOROOM_BG_EXECUTOR=prefect``, all real processes on loopback: the
service (uvicorn), a ``prefect task serve`` worker, the Prefect API, SeaweedFS, the emulator.
The service is SIGKILLed in the middle of a job and started again: the job finishes, every
image is stored once, and the Photoroom key is in no flow run's parameters or logs."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from photoroom_bg.testing import Faults, PhotoroomEmulator

from ..s3server import S3Server
from ..service.live import (
    API_KEY,
    ImageServer,
    image_server,
    merge_child_coverage,
    photo,
    poll,
    service_env,
    start_service,
)
from .conftest import QUIET_PREFECT
from .fleet import Fleet, prefect_env, task_worker, wait_for_line

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.slow, pytest.mark.s3]

WORKER_KEY = "pr-worker-key-" + "5c0ffee1d2"  # the workers' key: never a parameter or a log
SHARD_SIZE = 5
CONCURRENCY = 3
WORKER_LIMIT = 2


@pytest.fixture(scope="module")
def images() -> Iterator[ImageServer]:
    with image_server() as server:
        yield server


@pytest.fixture(scope="module", autouse=True)
def _child_coverage() -> Iterator[None]:
    yield
    merge_child_coverage()


def api_url() -> str:
    import prefect.settings

    return str(prefect.settings.PREFECT_API_URL.value())


def wait_for_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body = client.get(f"/api/v2/remove-backgrounds/{job_id}", params={"limit": 1000})
        data: dict[str, Any] = body.json()
        return data if data["status"] != "running" else None

    return poll(finished, timeout=180, what=f"job {job_id} to finish")


def test_a_prefect_job_survives_a_killed_service_and_pays_each_image_once(
    tmp_path: Path, s3_server: S3Server, s3_prefix: str, images: ImageServer
) -> None:
    emulator = PhotoroomEmulator(
        {API_KEY: 100_000, WORKER_KEY: 100_000}, faults=Faults(latency=0.1)
    )
    url = api_url()
    assert urlsplit(url).hostname == "127.0.0.1"
    storage = {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_REGION": s3_server.region,
    }
    home = tmp_path / "prefect-home"
    home.mkdir()
    fleet = Fleet(home=home, api_url=url, env=prefect_env(home, url))
    with emulator.serve() as emulator_url:
        worker_env = {
            **storage,
            "AWS_ENDPOINT_URL_S3": s3_server.endpoint_url,
            "PHOTOROOM_BASE_URL": emulator_url,
            "PHOTOROOM_API_KEY": WORKER_KEY,
            "PHOTOROOM_BG_ALLOW_NETWORKS": "127.0.0.1/32",
        }
        env = {
            **service_env(
                emulator_url=emulator_url,
                sink=f"{s3_prefix}/service",
                state_dir=tmp_path / "state",
                executor="prefect",
                s3_endpoint_url=s3_server.endpoint_url,
                prefect_shard_size=str(SHARD_SIZE),
                concurrency=str(CONCURRENCY),
                photoroom_requests_per_minute="0",
            ),
            **storage,
            **QUIET_PREFECT,
            "PREFECT_API_URL": url,
            "PREFECT_HOME": str(home),
        }
        log = tmp_path / "service.log"
        with task_worker(fleet, "worker", worker_env, WORKER_LIMIT) as worker:
            wait_for_line(home / "worker.log", "Subscribing to runs", worker)
            service = start_service(env, log)
            try:
                with service.client() as client:
                    ready = client.get("/health/ready").json()
                    assert ready["checks"]["executor"] == {"ok": True, "name": "prefect"}
                    urls = [images.image(n) for n in range(500, 540)]
                    job = client.post(
                        "/api/v2/remove-backgrounds", json={"image_urls": urls}
                    ).json()
                    uploads = client.post(
                        "/api/v2/remove-backgrounds",
                        files=[("files", (f"p{n}.png", photo(n), "image/png")) for n in (1, 2)],
                    ).json()
                    # kill the service once some images are paid for and stored, not all
                    poll(lambda: emulator.ledger.calls() >= 8, timeout=120, what="8 calls")
                service.process.send_signal(signal.SIGKILL)
                service.process.wait(30)
                calls_at_kill = emulator.ledger.calls()
                service = start_service(env, log)  # the same host, the same state folder
                with service.client() as client:
                    done = wait_for_job(client, job["job_id"])
                    done_uploads = wait_for_job(client, uploads["job_id"])
                    output = client.get(done["items"][7]["output_url"])
            finally:
                service.stop()
        flow_runs = fleet.api("POST", "/flow_runs/filter", json={})
        logs = fleet.api("POST", "/logs/filter", json={"limit": 200})

    assert done["status"] == "completed", done
    assert done["stored_count"] == 40
    assert [i["source"] for i in done["items"]] == urls  # item i is input i
    assert output.status_code == 200
    assert output.content.startswith(b"\x89PNG")
    assert done_uploads["status"] == "completed", done_uploads
    assert [i["source"] for i in done_uploads["items"]] == ["upload:p1.png", "upload:p2.png"]
    # the killed service coordinated the job; the restarted one resumed it: stored images
    # were skipped, only those in flight at the kill may have been paid for twice
    assert calls_at_kill < 42
    in_flight = WORKER_LIMIT * CONCURRENCY
    assert 42 <= emulator.ledger.calls() <= 42 + in_flight
    assert "resuming job" in log.read_text()
    # no key in what Prefect holds
    text = json.dumps(flow_runs) + json.dumps(logs)
    assert API_KEY not in text
    assert WORKER_KEY not in text
