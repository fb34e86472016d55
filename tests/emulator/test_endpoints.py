"""Both SDK clients against the emulator over loopback: every endpoint, real image work."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest

from photoroom_bg import EditOptions, PhotoroomWarning, SegmentOptions
from photoroom_bg.errors import AuthenticationError, BadRequestError
from photoroom_bg.testing import PhotoroomEmulator

from ..sources.conftest import ImageServer
from .conftest import Twin, decode, product_photo, unique_photo


async def test_segment_cuts_the_subject_out(twin: Twin) -> None:
    result = await twin.call("remove_background", product_photo())
    assert result.content_type == "image/png"
    alpha = np.asarray(decode(result.content).getchannel("A"))
    assert alpha[30, 40] == 255  # the product
    assert alpha[2, 2] == 0  # the studio background
    assert 0 <= result.uncertainty_score <= 1


async def test_segment_options_change_the_image(twin: Twin) -> None:
    mask = await twin.call("remove_background", product_photo(), SegmentOptions(channels="alpha"))
    assert decode(mask.content).mode == "L"
    cropped = await twin.call("remove_background", product_photo(), SegmentOptions(crop=True))
    assert decode(cropped.content).size < (80, 60)
    filled = await twin.call(
        "remove_background", product_photo(), SegmentOptions(bg_color="#00FF00", format="jpg")
    )
    assert filled.content_type == "image/jpeg"
    corner = decode(filled.content).convert("RGB").getpixel((1, 1))
    assert corner[1] > 200
    assert corner[0] < 60
    small = await twin.call(
        "remove_background", product_photo((2000, 1500)), SegmentOptions(size="preview")
    )
    width, height = decode(small.content).size
    assert width * height <= 250_000
    webp = await twin.call("remove_background", product_photo(), SegmentOptions(format="webp"))
    assert webp.content_type == "image/webp"


async def test_segment_base64_json(twin: Twin) -> None:
    result = await twin.call("remove_background", product_photo(), SegmentOptions(base64=True))
    assert decode(result.content).size == (80, 60)


async def test_edit_post_applies_colour_size_padding_and_format(twin: Twin) -> None:
    result = await twin.call(
        "edit",
        product_photo(),
        EditOptions(
            background_color="#0000FF",
            output_size="200x100",
            padding=0.1,
            export_format="webp",
        ),
    )
    image = decode(result.content).convert("RGB")
    assert result.content_type == "image/webp"
    assert image.size == (200, 100)
    assert image.getpixel((2, 2))[2] > 200  # blue background


async def test_edit_get_fetches_the_image_url(twin: Twin) -> None:
    server = ImageServer()
    server.start()
    try:
        result = await twin.call(
            "edit",
            f"{server.url}/img.png",
            EditOptions(output_size="32x32", background_prompt="a beach"),
        )
    finally:
        server.stop()
    assert decode(result.content).size == (32, 32)
    assert result.edit_further_url is not None
    assert result.ai_background_seed is not None


async def test_account_reflects_usage(twin: Twin, emulator: PhotoroomEmulator) -> None:
    before = (await twin.call("account")).images_available
    await twin.call("remove_background", product_photo())
    await twin.call("edit", product_photo(), EditOptions(padding=0.1))
    after = await twin.call("account")
    assert before - after.images_available == 6  # 1 segment + 5 edit on a basic plan
    assert after.plan == "basic"
    async with httpx.AsyncClient(base_url=emulator.url) as http:
        v1 = (await http.get("/v1/account", headers={"x-api-key": "key-one"})).json()
        missing = await http.get("/v2/account")
    assert v1["credits"]["available"] == after.images_available
    assert missing.status_code == 400
    assert missing.json() == {"error": {"message": "apiKey: Required"}}


async def test_unknown_keys_are_refused(emulator: PhotoroomEmulator) -> None:
    with emulator.client(api_key="wrong-key") as client, pytest.raises(AuthenticationError) as e:
        client.remove_background(product_photo())
    assert e.value.status_code == 403
    assert "wrong-key" not in repr(emulator.requests)


async def test_unknown_enum_values_get_each_host_s_envelope(emulator: PhotoroomEmulator) -> None:
    async with httpx.AsyncClient(base_url=emulator.url, headers={"x-api-key": "key-one"}) as http:
        flat = await http.post(
            "/v1/segment", files={"image_file": ("a.png", product_photo())}, data={"size": "huge"}
        )
        nested = await http.get(
            "/v2/edit", params={"imageUrl": "http://x/y.png", "scaling": "zoom"}
        )
        missing = await http.post("/v1/segment", files={"format": (None, "png")})
    assert flat.status_code == 400
    assert flat.json()["status_code"] == 400
    assert "size must be one of" in flat.json()["detail"]
    assert nested.status_code == 400
    assert "scaling must be one of" in nested.json()["error"]["message"]
    assert missing.json()["type"] == "missing_image"


async def test_sdk_errors_from_the_emulator_are_typed(twin: Twin) -> None:
    options = SegmentOptions(extra_params={"format": "gif"})  # slips past local validation
    with pytest.raises(BadRequestError, match="format must be one of") as caught:
        await twin.call("remove_background", product_photo(), options)
    assert caught.value.status_code == 400


async def test_undecodable_images_are_a_400(emulator: PhotoroomEmulator) -> None:
    async with httpx.AsyncClient(base_url=emulator.url, headers={"x-api-key": "key-one"}) as http:
        answer = await http.post("/v1/segment", files={"image_file": ("a.png", b"garbage")})
    assert answer.status_code == 400
    assert answer.json()["type"] == "invalid_image"


async def test_unsupported_parameters_come_back_as_a_warning(twin: Twin) -> None:
    with pytest.warns(PhotoroomWarning, match="made.up"):
        result = await twin.call(
            "edit", product_photo(), EditOptions(extra_params={"made.up": "1"})
        )
    assert result.unsupported_attributes == ("made.up",)


async def test_sandbox_keys_are_watermarked_and_not_billed(emulator: PhotoroomEmulator) -> None:
    with (
        emulator.client(api_key="key-two") as live,
        emulator.client(api_key="sandbox_key-two") as sandbox,
    ):
        billed = emulator.ledger.billed("key-two")
        clean = live.remove_background(product_photo())
        marked = sandbox.remove_background(product_photo())
    assert marked.watermarked is True
    assert clean.watermarked is False
    assert emulator.ledger.billed("key-two") == billed + 1
    difference = np.abs(
        np.asarray(decode(clean.content), dtype=int) - np.asarray(decode(marked.content), dtype=int)
    )
    assert difference.sum() > 0


def test_a_sandbox_key_the_emulator_was_given_whole_is_its_own_sandbox_account() -> None:
    # `photoroom-bg emulator --key sandbox_test` printed "export PHOTOROOM_API_KEY=
    # sandbox_test", then refused that key: it looked up an account "test"
    emu = PhotoroomEmulator({"sandbox_test": 100})
    with emu.serve(), emu.client(api_key="sandbox_test") as client:
        assert client.account().images_available == 100
        marked = client.remove_background(product_photo())
        assert client.account().images_available == 100  # sandbox calls are free
    assert marked.watermarked is True
    assert emu.ledger.calls() == 0


async def test_request_log_has_parameters_but_never_the_key(
    twin: Twin, emulator: PhotoroomEmulator
) -> None:
    await twin.call("remove_background", product_photo(), SegmentOptions(crop=True))
    last = emulator.requests[-1]
    assert (last.method, last.path, last.status) == ("POST", "/v1/segment", 200)
    assert last.params == {"crop": "true"}
    assert "key-one" not in repr(emulator.requests)


def test_images_are_billed_once_each_and_inspectable(emulator: PhotoroomEmulator) -> None:
    import hashlib

    photo = unique_photo()
    with emulator.client(api_key="key-one") as client:
        client.remove_background(photo)
    assert emulator.ledger.billed_per_image()[hashlib.sha256(photo).hexdigest()] == 1
    assert isinstance(io.BytesIO(photo).read(), bytes)
