"""/v1/render (legacy templates) and /v1/account (credits) through both clients, over real
sockets to the emulator."""

from __future__ import annotations

import httpx
import pytest

from photoroom_bg import Credits, EditOptions
from photoroom_bg.errors import BadRequestError, ValidationError
from photoroom_bg.testing import PhotoroomEmulator

from ..sources.conftest import ImageServer
from .conftest import Twin, decode, product_photo

TEMPLATE = "592dd982-4a1b-4cd9-ab11-21481d5a0064"


async def test_render_posts_a_file_and_bills_like_an_edit(
    twin: Twin, emulator: PhotoroomEmulator
) -> None:
    before = (await twin.call("credits")).available
    result = await twin.call("render", product_photo(), TEMPLATE)
    assert result.content_type == "image/png"
    rendered = decode(result.content)
    assert (rendered.mode, rendered.size) == ("RGBA", (80, 60))  # a cut-out, the input's size
    (logged,) = [r for r in emulator.requests[-2:] if r.path == "/v1/render"]
    assert (logged.method, logged.params) == ("POST", {"templateId": TEMPLATE})
    after = await twin.call("credits")
    assert isinstance(after, Credits)
    assert before - after.available == 5


async def test_render_gets_an_image_url(twin: Twin, emulator: PhotoroomEmulator) -> None:
    server = ImageServer()
    server.start()
    try:
        result = await twin.call("render", f"{server.url}/img.png", TEMPLATE)
    finally:
        server.stop()
    assert decode(result.content).format == "PNG"
    assert emulator.requests[-1].method == "GET"
    assert emulator.requests[-1].params["templateId"] == TEMPLATE


async def test_the_legacy_get_takes_the_key_as_a_query_parameter_and_never_logs_it(
    emulator: PhotoroomEmulator,
) -> None:
    server = ImageServer()
    server.start()
    try:
        async with httpx.AsyncClient(base_url=emulator.url) as http:
            answer = await http.get(
                "/v1/render",
                params={
                    "templateId": TEMPLATE,
                    "imageUrl": f"{server.url}/img.png",
                    "apiKey": "key-one",
                },
            )
    finally:
        server.stop()
    assert answer.status_code == 200
    assert "key-one" not in repr(emulator.requests)


async def test_render_needs_its_template_and_image(twin: Twin, emulator: PhotoroomEmulator) -> None:
    with pytest.raises(ValidationError) as refused:
        await twin.call("render", product_photo(), None)
    assert refused.value.rule == "templateId:required"
    async with httpx.AsyncClient(base_url=emulator.url, headers={"x-api-key": "key-one"}) as http:
        no_template = await http.post("/v1/render", files={"imageFile": ("a.png", product_photo())})
        no_image = await http.post("/v1/render", files={"templateId": (None, TEMPLATE)})
    assert no_template.status_code == no_image.status_code == 400
    assert no_template.headers["x-emulator-rule"] == "templateId:required"
    assert no_image.headers["x-emulator-rule"] == "render:needs-image"


async def test_an_image_from_a_prompt_alone_is_emulated(twin: Twin) -> None:
    result = await twin.call("edit", None, EditOptions(image_from_prompt_prompt="a red shoe"))
    assert result.content_type == "image/png"


async def test_the_emulator_refuses_with_the_sdks_own_rule(twin: Twin) -> None:
    # the SDK passes extra_params through; the emulator holds them to the same rules
    with pytest.warns(UserWarning, match="padding:spacing"), pytest.raises(BadRequestError) as e:
        await twin.call("edit", product_photo(), EditOptions(extra_params={"padding": "60%"}))
    assert e.value.response is not None
    assert e.value.response.headers["x-emulator-rule"] == "padding:spacing"
    assert e.value.message.startswith("padding must be a ratio")
