"""A caller that gives up and sends the same image again does not pay twice: the cut-outs
``/api/v1`` answered without storing them are kept for a while, per process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from photoroom_bg.errors import ObjectNotFoundError
from photoroom_bg.service._recent import KEEP_SECONDS, PIN_SECONDS, RecentOutputs
from photoroom_bg.testing import Faults, PhotoroomEmulator

from .live import API_KEY, ImageServer, ServiceProcess, poll, service_env, start_service


def test_recent_outputs_forget_the_oldest_past_their_budget_or_age_but_not_the_newest() -> None:
    now = [0.0]
    recent = RecentOutputs(250, clock=lambda: now[0])

    async def scenario() -> None:
        await recent.put("a.png", b"a" * 100)
        now[0] = 100.0
        await recent.put("b.png", b"b" * 100)
        now[0] = 200.0
        assert await recent.exists("a.png")  # found: kept for its reader
        now[0] = 300.0
        await recent.put("c.png", b"c" * 100)  # over budget: the least recently used goes
        assert not await recent.exists("b.png")
        assert await recent.exists("a.png")
        assert await recent.get("c.png") == b"c" * 100
        # a put past the budget while all are younger than the pin keeps them all
        await recent.put("d.png", b"d" * 1000)
        assert recent.total_bytes == 1200
        now[0] = 300.0 + PIN_SECONDS
        await recent.put("e.png", b"e")  # the pinned ones are old enough to go now
        assert sorted(recent.objects) == ["e.png"]
        now[0] += KEEP_SECONDS
        assert not await recent.exists("e.png")  # expired, however small
        with pytest.raises(ObjectNotFoundError):
            await recent.get("e.png")

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def slow_service(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServiceProcess, PhotoroomEmulator]]:
    root: Path = tmp_path_factory.mktemp("retries")
    emulator = PhotoroomEmulator([API_KEY], credits=100, faults=Faults(latency=1.0))
    with emulator.serve():
        assert emulator.url is not None
        env = service_env(emulator_url=emulator.url, sink=str(root / "sink"), state_dir=root)
        service = start_service(env, root / "service.log")
        try:
            yield service, emulator
        finally:
            service.stop()


def test_a_retry_after_the_callers_timeout_is_answered_without_paying_again(
    slow_service: tuple[ServiceProcess, PhotoroomEmulator], images: ImageServer
) -> None:
    # the first request went on and was billed; the retry paid for the same image again
    service, emulator = slow_service
    body = {"image_url": images.image(31), "options": {"crop": True}}
    before = emulator.ledger.calls()
    with service.client() as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/api/v1/remove-background", json=body, timeout=0.3)
        again = client.post("/api/v1/remove-background", json=body, timeout=30)
        assert again.status_code == 200, again.text
        assert again.headers["content-type"] == "image/png"
        # later still, the same: found among the recent outputs
        third = client.post("/api/v1/remove-background", json=body, timeout=30)
    assert third.content == again.content
    assert emulator.ledger.calls() - before == 1
    assert not list((Path(service.env["PHOTOROOM_BG_SINK"]) / "outputs").glob("*"))


def test_the_same_image_sent_twice_at_once_is_paid_once(
    slow_service: tuple[ServiceProcess, PhotoroomEmulator], images: ImageServer
) -> None:
    service, emulator = slow_service
    body = {"image_url": images.image(32)}
    before = emulator.ledger.calls()
    answers: list[httpx.Response] = []

    def send() -> None:
        with service.client() as client:
            answers.append(client.post("/api/v1/remove-background", json=body, timeout=30))

    threads = [threading.Thread(target=send) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len({a.content for a in answers}) == 1
    assert emulator.ledger.calls() - before == 1


@pytest.mark.slow
def test_a_request_still_open_when_the_service_stops_stores_what_it_paid_for(
    tmp_path: Path, images: ImageServer
) -> None:
    # a stopping server gives open requests 10 s, then cancels them: a call longer than
    # that (an AI feature) was paid and dropped, and the caller's retry paid for it again
    emulator = PhotoroomEmulator([API_KEY], credits=100, faults=Faults(latency=12.0))
    body = {"image_url": images.image(33), "store": True}
    with emulator.serve():
        assert emulator.url is not None
        env = service_env(
            emulator_url=emulator.url, sink=str(tmp_path / "sink"), state_dir=tmp_path
        )
        first = start_service(env, tmp_path / "first.log")
        answers: list[object] = []

        def send() -> None:
            try:
                with first.client() as client:
                    answers.append(client.post("/api/v1/remove-background", json=body))
            except httpx.HTTPError as exc:
                answers.append(exc)

        caller = threading.Thread(target=send)
        try:
            caller.start()
            poll(lambda: images.hits.get("/img/33.png"), timeout=30, what="the image's fetch")
        finally:
            first.stop()  # under way for 12 s: past the server's 10 s for open requests
            caller.join(60)
        assert "Cancel 1 running task(s)" in first.log_text()  # the request was cut
        # its call went on and its cut-out was stored before the service exited
        assert len(list((tmp_path / "sink" / "outputs").glob("*.png"))) == 1
        again = start_service(env, tmp_path / "again.log")
        try:
            with again.client() as client:
                retry = client.post("/api/v1/remove-background", json=body)
        finally:
            again.stop()
    assert retry.status_code == 200, retry.text
    assert retry.json()["status"] == "skipped"  # stored by the stopped service
    assert emulator.ledger.calls() == 1
