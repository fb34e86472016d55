"""The emulator as a testing kit for other people's code: its constructor, its request log,
its faults and its shutdown, used as the testing guide shows."""

from __future__ import annotations

import io
import threading

import httpx
import pytest
from PIL import Image

from photoroom_bg.testing import Faults, PhotoroomEmulator

from ..sources.conftest import ImageServer
from .conftest import product_photo


def _emulator_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "photoroom-emulator" and t.is_alive()]


def test_stopping_with_a_stalled_request_under_way_ends_the_server() -> None:
    # the stall fault is meant to outlast a client's timeout: the client gives up, and
    # serve()'s exit then waited 30 s for the sleeping request and left the thread running
    emu = PhotoroomEmulator(faults=Faults(stall_seconds=600), image_work=False)
    before = _emulator_threads()
    with emu.serve() as url:
        emu.inject("stall")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/segment", headers={"x-api-key": emu.api_key}, timeout=0.5)
    assert _emulator_threads() == before


def test_an_ipv6_address_is_served_under_a_url_with_brackets() -> None:
    # "http://::1:42595": no client could use it
    emu = PhotoroomEmulator(image_work=False)
    with emu.serve(host="::1") as url:
        assert url.startswith("http://[::1]:")
        with emu.client() as client:
            assert client.account().images_available == 1000


def test_one_key_given_as_a_string_is_one_key() -> None:
    # PhotoroomEmulator("my-test-key") made the keys "m", "y", "-", "t"...
    emu = PhotoroomEmulator("my-test-key", image_work=False)
    assert emu.api_key == "my-test-key"
    assert list(emu.ledger.accounts) == ["my-test-key"]


def test_an_account_that_never_runs_out_answers_json() -> None:
    # credits=inf ("never runs out") answered {"available": Infinity}, which is no JSON
    emu = PhotoroomEmulator(credits=float("inf"), image_work=False)
    with emu.serve(), emu.client() as client:
        assert client.account().images_available == 1_000_000_000_000
        client.remove_background(product_photo())
        assert client.account().images_available == 1_000_000_000_000


def test_the_request_log_never_holds_a_key_given_in_a_query() -> None:
    # a GET /v2/edit with ?apiKey=... logged it in its params ("never with the key")
    emu = PhotoroomEmulator(image_work=False)
    images = ImageServer()
    images.start()
    try:
        with emu.serve() as url:
            answer = httpx.get(
                f"{url}/v2/edit",
                params={"imageUrl": f"{images.url}/img.png", "apiKey": "s3cret-key"},
                headers={"x-api-key": emu.api_key},
            )
    finally:
        images.stop()
    assert answer.status_code == 200, answer.text
    assert emu.requests[-1].params["imageUrl"] == f"{images.url}/img.png"
    assert "s3cret-key" not in repr(emu.requests)


def test_faults_are_queued_all_or_none_and_logged_with_the_status_they_send() -> None:
    emu = PhotoroomEmulator(faults=Faults(retry_after=0.5, stall_seconds=0.05), image_work=False)
    # one bad name in inject() raised, but queued the good ones before it
    with pytest.raises(ValueError, match="bogus"):
        emu.inject("503", "bogus")
    with emu.serve() as url:
        emu.inject("429", "garble", "stall")
        answers = [
            httpx.post(f"{url}/v1/segment", headers={"x-api-key": emu.api_key}) for _ in range(3)
        ]
        after = httpx.post(f"{url}/v1/segment", headers={"x-api-key": emu.api_key})
    # a Retry-After of 0.5 s was sent as "0": retry at once
    assert answers[0].headers["retry-after"] == "1"
    assert [a.status_code for a in answers] == [429, 200, 504]
    # garble and stall were logged with status 0, where they answer 200 and 504
    logged = [(r.status, r.fault) for r in emu.requests]
    assert logged[:3] == [(429, "429"), (200, "garble"), (504, "stall")]
    assert after.status_code == 400  # no fault left over: an answer of the API's own


def test_the_ledger_counts_a_known_keys_sandbox_form() -> None:
    # calls("sandbox_k") and billed("sandbox_k") raised KeyError, available() did not
    emu = PhotoroomEmulator(["k"], image_work=False)
    with emu.serve(), emu.client(api_key="sandbox_k") as sandbox:
        sandbox.remove_background(product_photo())
    assert emu.ledger.calls("sandbox_k") == emu.ledger.calls("k") == 0
    assert emu.ledger.billed("sandbox_k") == 0


def _image(size: tuple[int, int], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("path", "field", "data", "refused"),
    [
        # API.md: /v1/segment takes up to 6,000 px on the longest side, PNG/JPEG/WEBP/HEIC;
        # /v2/edit PNG/JPEG/WEBP, each input image (main, background, guidance) up to 30 MB
        ("/v1/segment", "image_file", _image((7000, 10), "PNG"), "at most 6000 px"),
        ("/v1/segment", "image_file", _image((64, 48), "GIF"), "Unsupported image format GIF"),
        ("/v1/segment", "image_file", _image((64, 48), "BMP"), "Unsupported image format BMP"),
        ("/v2/edit", "imageFile", _image((64, 48), "GIF"), "Unsupported image format GIF"),
        ("/v2/edit", "background.imageFile", _image((64, 48), "GIF"), "background.imageFile"),
        ("/v2/edit", "background.imageFile", b"\x89PNG" + b"\0" * (31 << 20), "max 30MB"),
    ],
    ids=[
        "segment 7000 px",
        "segment GIF",
        "segment BMP",
        "edit GIF",
        "edit GIF background",
        "edit 31 MB background",
    ],
)
def test_inputs_the_api_refuses_are_refused_and_not_billed(
    path: str, field: str, data: bytes, refused: str
) -> None:
    # each of these was made, answered 200 and billed
    emu = PhotoroomEmulator(image_work=False)
    files = {field: ("x", data, "application/octet-stream")}
    if field != "image_file" and field != "imageFile":
        files["imageFile"] = ("p.png", _image((64, 48), "PNG"), "image/png")
    with emu.serve() as url:
        answer = httpx.post(f"{url}{path}", files=files, headers={"x-api-key": emu.api_key})
    assert answer.status_code == 400, answer.text
    assert refused in answer.text
    assert emu.ledger.calls() == 0
