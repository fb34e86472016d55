"""A caller that gives up and sends the same image again does not pay twice: the cut-outs
``/api/v1`` answered without storing them are kept for a while, per process."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from photoroom_bg.errors import ObjectNotFoundError
from photoroom_bg.service._recent import KEEP_SECONDS, RecentOutputs
from photoroom_bg.testing import Faults, PhotoroomEmulator

from .live import (
    API_KEY,
    ImageServer,
    ServiceProcess,
    app_settings,
    poll,
    service_env,
    start_service,
)


def test_recent_outputs_forget_the_oldest_past_their_budget_or_age() -> None:
    now = [0.0]
    recent = RecentOutputs(250, clock=lambda: now[0])

    async def scenario() -> None:
        await recent.put("a.png", b"a" * 100)
        now[0] = 100.0
        await recent.put("b.png", b"b" * 100)
        now[0] = 200.0
        assert await recent.exists("a.png")  # found: now the most recently used
        now[0] = 300.0
        await recent.put("c.png", b"c" * 100)  # over budget: the least recently used goes
        assert not await recent.exists("b.png")
        assert await recent.exists("a.png")
        assert await recent.get("c.png") == b"c" * 100
        # the budget is a bound: a burst past it keeps only what fits, newest first
        await recent.put("d.png", b"d" * 200)
        assert sorted(recent.objects) == ["d.png"]
        assert recent.total_bytes <= 250
        now[0] += KEEP_SECONDS
        assert not await recent.exists("d.png")  # expired, however small
        with pytest.raises(ObjectNotFoundError):
            await recent.get("d.png")

    asyncio.run(scenario())


def test_what_a_request_puts_or_finds_is_held_until_it_has_answered() -> None:
    # a v1 ZIP of several cut-outs past the budget lost its first ones once they were a
    # minute old, before the last call was done: paid for, and listed in errors.json as gone.
    # And cut-outs younger than a minute were never forgotten, so a burst took the memory
    # past the budget by as much as a minute of answers
    now = [0.0]
    recent = RecentOutputs(250, clock=lambda: now[0])

    async def scenario() -> None:
        zipped, other = recent.session(), recent.session()
        await zipped.put("first.png", b"1" * 200)
        now[0] += 120.0  # the ZIP's last call takes a while
        await other.put("b.png", b"b" * 200)  # another request, over the budget
        assert await zipped.get("first.png") == b"1" * 200  # held: its reader is not done
        await zipped.put("last.png", b"2" * 10)
        assert sorted(recent.objects) == ["b.png", "first.png", "last.png"]  # all held
        await zipped.aclose()
        await other.aclose()
        # answered: what the ZIP held goes by the usual rules, oldest first
        await recent.put("c.png", b"c" * 100)
        assert "first.png" not in recent.objects
        assert recent.total_bytes <= 250
        # a retry finds a cut-out, which is then held for it until it answers too
        retry = recent.session()
        assert await retry.exists("c.png")
        await recent.put("big.png", b"x" * 300)
        assert await retry.get("c.png") == b"c" * 100
        await retry.aclose()
        # a closed session (a request cut while its batch goes on) holds nothing more
        await retry.put("late.png", b"l" * 10)
        await recent.put("next.png", b"n" * 250)
        assert "late.png" not in recent.objects

    asyncio.run(scenario())


@pytest.mark.filterwarnings("ignore:Using .httpx. with .starlette.testclient")
def test_a_zip_past_the_memory_budget_keeps_every_cut_out_it_paid_for(
    tmp_path: Path, images: ImageServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the cut-outs of a v1 ZIP were forgotten, oldest first, past the budget once they were
    # older than a minute (here: once older than the pin made short): a batch whose last call
    # came later lost its first ones, paid for, listed in errors.json as gone
    import io
    import zipfile

    from fastapi.testclient import TestClient

    from photoroom_bg.service import _recent, create_app

    monkeypatch.setattr(_recent, "PIN_SECONDS", 0.2, raising=False)
    emulator = PhotoroomEmulator([API_KEY], credits=10, faults=Faults(latency=0.5))
    with emulator.serve() as url:
        settings = app_settings(
            tmp_path,
            url,
            concurrency=1,  # one call after the other: the first cut-out waits for the last
            recent_outputs_bytes=1,
        )
        with TestClient(create_app(settings)) as client:
            answer = client.post(
                "/api/v1/remove-backgrounds",
                json={"image_urls": [images.image(41), images.image(42)]},
                headers={"Authorization": "Bearer t0ken", "Accept": "application/zip"},
            )
    assert answer.status_code == 200, answer.text
    zipped = zipfile.ZipFile(io.BytesIO(answer.content))
    assert json.loads(zipped.read("errors.json")) == []
    assert len([n for n in zipped.namelist() if n != "errors.json"]) == 2
    assert emulator.ledger.calls() == 2


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
