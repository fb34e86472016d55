"""Calls Photoroom may have billed: never made again unless the operator asks for it, and no
new call once the service is stopping. Real parts: uvicorn children, the emulator and its
ledger, a loopback image server."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from photoroom_bg.service import ServiceSettings
from photoroom_bg.testing import Faults, PhotoroomEmulator

from .live import API_KEY, ImageServer, app_settings, poll, service_env, start_service
from .test_endpoints import wait_for_job


def test_a_failure_photoroom_may_have_billed_is_not_paid_for_again(
    tmp_path: Path, images: ImageServer
) -> None:
    # every such failure was retried: a call billed and then answered 502 was paid for six
    # times in one /api/v1 request, and a job's images once per reset answer
    emulator = PhotoroomEmulator(
        [API_KEY],
        credits=1000,
        faults=Faults(rates={"bill-502": 0.5, "bill-reset": 0.5}, paths=("/v1/segment",), seed=3),
    )
    with emulator.serve():
        assert emulator.url is not None
        env = service_env(
            emulator_url=emulator.url, sink=str(tmp_path / "sink"), state_dir=tmp_path / "state"
        )
        service = start_service(env, tmp_path / "service.log")
        try:
            with service.client() as client:
                one = client.post("/api/v1/remove-background", json={"image_url": images.image(1)})
                urls = [images.image(n) for n in range(2, 8)]
                job = client.post("/api/v2/remove-backgrounds", json={"image_urls": urls})
                assert job.status_code == 202, job.text
                done = wait_for_job(client, job.json()["job_id"])
        finally:
            service.stop()
    assert set(emulator.ledger.billed_per_image().values()) == {1}
    assert emulator.ledger.calls() == 7
    assert one.status_code == 502, one.text
    assert one.json()["code"] in ("photoroom_server_error", "photoroom_unreachable")
    assert one.json()["possibly_billed"] is True
    assert done["status"] == "completed"
    codes = {item["error"]["code"] for item in done["items"]}
    assert codes <= {"photoroom_server_error", "photoroom_unreachable"}, codes
    assert all(item["possibly_billed"] for item in done["items"])


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient")
def test_an_operator_may_have_possibly_billed_failures_retried(
    tmp_path: Path, images: ImageServer
) -> None:
    from fastapi.testclient import TestClient

    from photoroom_bg.service import create_app

    assert ServiceSettings.from_env({}).retry_possibly_billed is False
    environ = {"PHOTOROOM_BG_RETRY_POSSIBLY_BILLED": "true"}
    assert ServiceSettings.from_env(environ).retry_possibly_billed is True
    emulator = PhotoroomEmulator(
        [API_KEY], credits=100, faults=Faults(rates={"bill-502": 1.0}, paths=("/v1/segment",))
    )
    with emulator.serve() as url:
        settings = app_settings(
            tmp_path, url, retry_possibly_billed=True, max_retries=2, retry_backoff=0.0
        )
        with TestClient(create_app(settings)) as client:
            answer = client.post(
                "/api/v1/remove-background",
                json={"image_url": images.image(9)},
                headers={"Authorization": "Bearer t0ken"},
            )
    assert answer.status_code == 502, answer.text
    assert emulator.ledger.calls() == 3  # the first call and its two retries, each billed


def test_a_stopping_service_starts_no_new_call_and_resumes_the_job_at_its_next_start(
    tmp_path: Path, images: ImageServer
) -> None:
    # SIGTERM during a job let the inputs the batch had already queued go on to Photoroom
    # one after the other (three more paid calls at concurrency 1) after the stop began
    count = 10
    emulator = PhotoroomEmulator({API_KEY: 1000}, faults=Faults(latency=1.0), image_work=False)
    with emulator.serve() as emulator_url:
        env = service_env(
            emulator_url=emulator_url,
            sink=str(tmp_path / "sink"),
            state_dir=tmp_path / "state",
            concurrency="1",
        )
        first = start_service(env, tmp_path / "first.log")
        try:
            with first.client() as client:
                urls = [images.image(n) for n in range(400, 400 + count)]
                job = client.post("/api/v2/remove-backgrounds", json={"image_urls": urls})
                assert job.status_code == 202, job.text
            job_id = job.json()["job_id"]
            poll(lambda: emulator.ledger.calls() >= 2, timeout=60, what="two calls")
            paid_at_stop = emulator.ledger.calls()
            first.process.send_signal(signal.SIGTERM)
            first.process.wait(60)
        finally:
            first.stop()
        assert "stopping: waiting up to" in first.log_text()
        # the one call under way at the signal was finished; none was started after it
        assert emulator.ledger.calls() <= paid_at_stop + 1
        assert emulator.ledger.calls() < count

        again = start_service(env, tmp_path / "again.log")
        try:
            with again.client() as client:
                done: dict[str, Any] = wait_for_job(client, job_id)
        finally:
            again.stop()
    assert done["status"] == "completed"
    assert [item["status"] for item in done["items"]].count("failed") == 0
    assert sum(item["stored"] for item in done["items"]) == count
    assert emulator.ledger.calls() == count
    assert set(emulator.ledger.billed_per_image().values()) == {1}


def test_a_cancelled_job_starts_no_new_call(tmp_path: Path, images: ImageServer) -> None:
    # DELETE let the inputs the job's batch had already queued go on to Photoroom, each paid
    # for after the cancel, as SIGTERM did
    count = 10
    emulator = PhotoroomEmulator({API_KEY: 1000}, faults=Faults(latency=1.0), image_work=False)
    with emulator.serve() as emulator_url:
        env = service_env(
            emulator_url=emulator_url,
            sink=str(tmp_path / "sink"),
            state_dir=tmp_path / "state",
            concurrency="1",
        )
        service = start_service(env, tmp_path / "service.log")
        try:
            with service.client() as client:
                urls = [images.image(n) for n in range(500, 500 + count)]
                job = client.post("/api/v2/remove-backgrounds", json={"image_urls": urls})
                assert job.status_code == 202, job.text
                poll(lambda: emulator.ledger.calls() >= 2, timeout=60, what="two calls")
                paid_at_cancel = emulator.ledger.calls()
                assert client.delete(job.json()["status_url"]).status_code in (200, 202)
                done: dict[str, Any] = wait_for_job(client, job.json()["job_id"])
        finally:
            service.stop()
    assert done["status"] == "cancelled"
    # the one call under way at the cancel was finished and stored; none was started after it
    assert emulator.ledger.calls() <= paid_at_cancel + 1
    stored = sum(item["stored"] for item in done["items"])
    assert stored == emulator.ledger.calls()
    cancelled = [item for item in done["items"] if item["status"] == "cancelled"]
    assert len(cancelled) == count - stored
    assert {item["error"]["code"] for item in cancelled} == {"cancelled"}
