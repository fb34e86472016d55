"""Jobs survive their process: SIGKILL half-way, restart, and the job completes with every image
stored once and paid for at most once more than the images in flight at the kill. Real parts:
uvicorn children, SeaweedFS (S3), the emulator with injected faults."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from photoroom_bg.sinks import parse_s3_uri
from photoroom_bg.testing import Faults, PhotoroomEmulator

from ..s3server import S3Server
from .live import ALICE, API_KEY, ImageServer, ServiceProcess, poll, service_env, start_service

pytestmark = [pytest.mark.slow, pytest.mark.s3]

CONCURRENCY = 8


@pytest.fixture
def faulty_emulator() -> Iterator[PhotoroomEmulator]:
    """An emulator in its own thread that answers 5% 503s, 3% 429s and 2% 500s."""
    emulator = PhotoroomEmulator(
        {API_KEY: 100_000},
        faults=Faults(
            latency=0.03, rates={"503": 0.05, "429": 0.03, "500": 0.02}, retry_after=0, seed=7
        ),
        image_work=False,
    )
    with emulator.serve():
        yield emulator


def s3_env(s3_server: S3Server) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_REGION": s3_server.region,
        "PHOTOROOM_BG_S3_ENDPOINT_URL": s3_server.endpoint_url,
    }


def output_keys(s3_server: S3Server, sink: str) -> list[str]:
    """Every object under the sink's ``outputs/``, listed with a plain S3 client."""
    import botocore.session

    bucket, prefix = parse_s3_uri(sink)
    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        region_name=s3_server.region,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
    )
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "outputs/"
    ):
        keys += [item["Key"] for item in page.get("Contents", [])]
    client.close()
    return keys


def submit(service: ServiceProcess, images: ImageServer, numbers: range) -> str:
    """Start a v2 job of the image server's images ``numbers``; return its id."""
    urls = [images.image(n) for n in numbers]
    with service.client(ALICE) as client:
        answer = client.post("/api/v2/remove-backgrounds", json={"image_urls": urls})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["job_id"])


def status(service: ServiceProcess, job_id: str, **params: Any) -> dict[str, Any]:
    with service.client(ALICE) as client:
        answer = client.get(f"/api/v2/remove-backgrounds/{job_id}", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def stored(service: ServiceProcess, job_id: str) -> int:
    try:
        return int(status(service, job_id, limit=1)["stored_count"])
    except httpx.HTTPError:
        return 0


def completed(service: ServiceProcess, job_id: str) -> dict[str, Any] | None:
    body = status(service, job_id, limit=1000)
    return body if body["status"] != "running" else None


def test_a_killed_service_finishes_its_job_on_restart_without_paying_twice(
    s3_server: S3Server,
    s3_prefix: str,
    faulty_emulator: PhotoroomEmulator,
    images: ImageServer,
    tmp_path: Path,
) -> None:
    count = 500
    assert faulty_emulator.url is not None
    env = service_env(
        emulator_url=faulty_emulator.url,
        retry_possibly_billed="true",  # the emulator's 500s bill nothing: retried, as asked
        sink=s3_prefix,
        state_dir=tmp_path / "state",
        concurrency=str(CONCURRENCY),
        max_images_per_job=str(count),
        photoroom_requests_per_minute="0",
    )
    env.update(s3_env(s3_server))
    first = start_service(env, tmp_path / "first.log")
    try:
        job_id = submit(first, images, range(10_000, 10_000 + count))
        poll(lambda: stored(first, job_id) >= count // 2, timeout=120, what="half the job")
        midway = status(first, job_id, status="pending", limit=5)
    finally:
        first.kill()
    assert midway["status"] == "running"
    assert midway["progress"]["total"] == count
    assert midway["eta_seconds"] is not None
    assert midway["eta_seconds"] > 0
    assert all(item["status"] == "pending" for item in midway["items"])
    paid_at_kill = faulty_emulator.ledger.calls()
    assert paid_at_kill < count, "the job finished before the kill: nothing was tested"

    restarted = start_service(env, tmp_path / "restarted.log")
    try:
        done = poll(lambda: completed(restarted, job_id), timeout=180, what="the resumed job")
    finally:
        restarted.stop()

    assert done["status"] == "completed"
    assert done["stored_count"] == count
    assert done["counts"].get("failed", 0) == 0
    keys = output_keys(s3_server, s3_prefix)
    assert len(keys) == count  # every image stored once, under its own key
    assert {i["key"] for i in done["items"]} == {
        k.removeprefix(parse_s3_uri(s3_prefix)[1]) for k in keys
    }
    calls = faulty_emulator.ledger.calls()
    assert len(faulty_emulator.ledger.billed_per_image()) == count
    assert calls <= count + CONCURRENCY  # only images in flight at the kill were paid twice
    assert paid_at_kill >= count // 2

    # a second replica with a state folder of its own answers from the sink alone
    env2 = {
        **env,
        "PHOTOROOM_BG_STATE_DIR": str(tmp_path / "other"),
        "PHOTOROOM_BG_REPLICA_ID": "b",
    }
    other = start_service(env2, tmp_path / "other.log")
    try:
        again = status(other, job_id, limit=1000)
    finally:
        other.stop()
    assert again["status"] == "completed"
    assert again["stored_count"] == count
    assert [i["index"] for i in again["items"]] == list(range(count))
    assert faulty_emulator.ledger.calls() == calls
    for log in tmp_path.glob("*.log"):
        assert API_KEY not in log.read_text(errors="replace")


def test_a_service_stopped_gracefully_lets_its_calls_finish_and_pays_for_no_image_twice(
    s3_server: S3Server, s3_prefix: str, images: ImageServer, tmp_path: Path
) -> None:
    """A graceful stop (SIGTERM or Ctrl-C: a deploy, a scale-down) lets the calls already
    sent finish and stores their cut-outs before the service exits: the restarted service
    finishes the job and no image is paid for twice, where a kill may pay for those in
    flight again."""
    count = 40
    # each call is under way for 0.3 s, so calls the server bills are in flight at the stop
    slow = PhotoroomEmulator({API_KEY: 1000}, faults=Faults(latency=0.3), image_work=False)
    with slow.serve() as emulator_url:
        env = service_env(
            emulator_url=emulator_url,
            sink=s3_prefix,
            state_dir=tmp_path / "state",
            concurrency="4",
            photoroom_requests_per_minute="0",
        )
        env.update(s3_env(s3_server))
        first = start_service(env, tmp_path / "first.log")
        try:
            job_id = submit(first, images, range(30_000, 30_000 + count))
            poll(lambda: stored(first, job_id) >= 6, timeout=60, what="the job to start")
        finally:
            first.stop()
        assert first.process.returncode is not None
        paid_at_stop = slow.ledger.calls()
        assert paid_at_stop < count, "the job finished before the stop: nothing was tested"
        # every call paid for before the service exited was stored
        assert len(output_keys(s3_server, s3_prefix)) == paid_at_stop

        restarted = start_service(env, tmp_path / "restarted.log")
        try:
            done = poll(lambda: completed(restarted, job_id), timeout=120, what="the job")
        finally:
            restarted.stop()
    assert done["status"] == "completed"
    assert done["stored_count"] == count
    assert len(output_keys(s3_server, s3_prefix)) == count
    assert slow.ledger.calls() == count
    assert set(slow.ledger.billed_per_image().values()) == {1}


def test_another_replica_takes_over_a_job_whose_replica_died(
    s3_server: S3Server,
    s3_prefix: str,
    faulty_emulator: PhotoroomEmulator,
    images: ImageServer,
    tmp_path: Path,
) -> None:
    count = 80
    assert faulty_emulator.url is not None
    base = service_env(
        emulator_url=faulty_emulator.url,
        retry_possibly_billed="true",  # the emulator's 500s bill nothing: retried, as asked
        sink=s3_prefix,
        state_dir=tmp_path / "a",
        concurrency="2",
        max_images_per_job=str(count),
        photoroom_requests_per_minute="0",
        lease_seconds="1",
        replica_id="replica-a",
    )
    base.update(s3_env(s3_server))
    a = start_service(base, tmp_path / "a.log")
    try:
        job_id = submit(a, images, range(20_000, 20_000 + count))
        poll(lambda: stored(a, job_id) >= 10, timeout=60, what="the job to start")
    finally:
        a.kill()
    env_b = {
        **base,
        "PHOTOROOM_BG_STATE_DIR": str(tmp_path / "b"),
        "PHOTOROOM_BG_REPLICA_ID": "replica-b",
    }
    b = start_service(env_b, tmp_path / "b.log")
    try:
        done = poll(lambda: completed(b, job_id), timeout=120, what="replica b to finish it")
    finally:
        b.stop()
    assert done["status"] == "completed"
    assert done["replica"] == "replica-b"
    assert done["stored_count"] == count
    assert faulty_emulator.ledger.calls() <= count + 2
