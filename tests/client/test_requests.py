"""What each client method sends and how it reads the answer (respx, both twins)."""

from __future__ import annotations

import base64
import errno
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
import respx
from PIL import Image

from photoroom_bg import Account, EditOptions, ImageResult, PhotoroomWarning, SegmentOptions, _logs
from photoroom_bg.errors import InvalidImageError

from ..disks import fill, small_disk
from .conftest import (
    ACCOUNT,
    API_KEY,
    CUTOUT,
    EDIT,
    SEGMENT,
    Twin,
    jpeg,
    multipart_fields,
    png,
    text_fields,
)

pytestmark = pytest.mark.usefixtures("respx_mock")


@pytest.fixture
def respx_mock() -> respx.MockRouter:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


async def test_segment_sends_multipart_image_file_and_key(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    image = png()
    route = respx_mock.post(SEGMENT).respond(
        200,
        content=CUTOUT,
        headers={"content-type": "image/png", "x-uncertainty-score": "0.12"},
    )
    result = await twin.call(
        "remove_background", image, SegmentOptions(size="hd", crop=True, bg_color="FFFFFF")
    )
    request = route.calls.last.request
    assert request.headers["x-api-key"] == API_KEY
    assert "accept" not in request.headers or "json" not in request.headers["accept"]
    fields = multipart_fields(request)
    assert fields["image_file"] == ("image", image)
    assert text_fields(request) == {"size": "hd", "crop": "true", "bg_color": "#FFFFFF"}
    assert result.content == CUTOUT
    assert result.content_type == "image/png"
    assert result.uncertainty_score == pytest.approx(0.12)
    assert result.watermarked is False


@pytest.mark.parametrize("field", ["base64img", "result_b64"])
async def test_segment_base64_answers_are_decoded(
    twin: Twin, respx_mock: respx.MockRouter, field: str
) -> None:
    cutout = png(3, 3)
    route = respx_mock.post(SEGMENT).respond(200, json={field: base64.b64encode(cutout).decode()})
    result = await twin.call("remove_background", png(), SegmentOptions(base64=True))
    assert route.calls.last.request.headers["accept"] == "application/json"
    assert result.content == cutout
    assert result.content_type == "image/png"


async def test_segment_accepts_path_and_file_object(
    twin: Twin, respx_mock: respx.MockRouter, tmp_path: Path
) -> None:
    route = respx_mock.post(SEGMENT).respond(
        200, content=CUTOUT, headers={"content-type": "image/png"}
    )
    photo = tmp_path / "shoe.jpg"
    photo.write_bytes(jpeg())
    await twin.call("remove_background", photo)
    assert multipart_fields(route.calls.last.request)["image_file"] == ("shoe.jpg", jpeg())
    await twin.call("remove_background", io.BytesIO(png()))
    assert multipart_fields(route.calls.last.request)["image_file"][1] == png()
    with photo.open("rb") as handle:
        await twin.call("remove_background", handle)
    assert multipart_fields(route.calls.last.request)["image_file"][0] == "shoe.jpg"


async def test_a_file_object_already_read_is_refused_with_a_hint(
    twin: Twin, respx_mock: respx.MockRouter, tmp_path: Path
) -> None:
    # it said "shoe.jpg is empty (0 bytes)" of a file that is not
    route = respx_mock.post(SEGMENT).respond(
        200, content=CUTOUT, headers={"content-type": "image/png"}
    )
    photo = tmp_path / "shoe.jpg"
    photo.write_bytes(jpeg())
    with photo.open("rb") as handle:
        handle.read()
        with pytest.raises(
            InvalidImageError, match=r"shoe.jpg: nothing left to read: .* seek\(0\)"
        ):
            await twin.call("remove_background", handle)
    partly = io.BytesIO(png())
    partly.read(10)
    with pytest.raises(InvalidImageError, match="no image begins at position 10"):
        await twin.call("remove_background", partly)
    assert not route.called
    # an image that begins where the object stands (inside a larger file) is read from there
    inside = io.BytesIO(b"header--" + png())
    inside.seek(8)
    await twin.call("remove_background", inside)
    assert multipart_fields(route.calls.last.request)["image_file"][1] == png()


class _FailingRead:
    """A file object whose read() fails as a broken disk or a caller's wrapper may."""

    name = "shoe.jpg"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def read(self, size: int = -1) -> bytes:
        raise self.error


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("closed", r"shoe.jpg: the file object is closed"),
        (OSError(5, "Input/output error"), r"shoe.jpg: its read\(\) failed: Input/output error"),
        (KeyError("chunk"), r"shoe.jpg: its read\(\) failed: KeyError: 'chunk'"),
    ],
    ids=["closed", "oserror", "other"],
)
async def test_a_file_object_that_cannot_be_read_is_refused_with_a_typed_error(
    twin: Twin, respx_mock: respx.MockRouter, tmp_path: Path, make: Any, message: str
) -> None:
    # read() of a closed file raised ValueError out of the call, and a failing read() its
    # own error, where a batch fails that job with a typed error
    route = respx_mock.post(SEGMENT)
    if make == "closed":
        photo = tmp_path / "shoe.jpg"
        photo.write_bytes(jpeg())
        with photo.open("rb") as source:
            pass  # the with block ended before the call
    else:
        source = _FailingRead(make)
    with pytest.raises(InvalidImageError, match=message):
        await twin.call("remove_background", source)
    assert not route.called


async def test_edit_with_url_uses_get_and_encodes_query(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    webp = io.BytesIO()
    Image.new("RGBA", (3, 2)).save(webp, format="WEBP")
    route = respx_mock.get(EDIT).respond(
        200,
        content=webp.getvalue(),
        headers={
            "content-type": "image/webp",
            "pr-ai-background-seed": "1234",
            "pr-edit-further-url": "https://app.photoroom.com/edit/abc",
            "pr-texts-detected": "2",
        },
    )
    url = "https://example.com/shoe 1.jpg?size=big#frag"
    result = await twin.call(
        "edit",
        url,
        EditOptions(
            background_color="#FF0000",
            output_size="1000x1000",
            padding=0.1,
            background_prompt="a beach",
            export_format="webp",
        ),
    )
    request = route.calls.last.request
    assert request.method == "GET"
    assert request.content == b""
    assert dict(request.url.params) == {
        "imageUrl": url,
        "background.color": "FF0000",
        "outputSize": "1000x1000",
        "padding": "0.1",
        "background.prompt": "a beach",
        "export.format": "webp",
    }
    assert "#" not in request.url.query.decode()
    assert result.content_type == "image/webp"
    assert result.ai_background_seed == 1234
    assert result.texts_detected == 2
    assert result.edit_further_url == "https://app.photoroom.com/edit/abc"
    assert result.extension == ".webp"


async def test_edit_with_bytes_posts_everything_in_the_body(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(EDIT).respond(
        200, content=CUTOUT, headers={"content-type": "image/png"}
    )
    background = jpeg(4, 4)
    await twin.call(
        "edit",
        png(),
        EditOptions(
            remove_background=True,
            background_image_file=background,
            background_scaling="fit",
            shadow_mode="ai.soft",
            hd_background_removal="auto",
        ),
    )
    request = route.calls.last.request
    assert request.url.query == b""
    fields = multipart_fields(request)
    assert fields["imageFile"] == ("image", png())
    assert fields["background.imageFile"][1] == background
    assert text_fields(request) == {
        "removeBackground": "true",
        "background.scaling": "fit",
        "shadow.mode": "ai.soft",
    }
    assert request.headers["pr-hd-background-removal"] == "auto"


async def test_edit_url_with_file_option_is_refused_before_sending(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    from photoroom_bg.errors import ValidationError

    route = respx_mock.get(EDIT)
    with pytest.raises(ValidationError, match=r"background\.imageFile"):
        await twin.call("edit", "https://x/y.png", EditOptions(background_image_file=png()))
    assert not route.called


async def test_edit_from_prompt_needs_no_image(twin: Twin, respx_mock: respx.MockRouter) -> None:
    route = respx_mock.post(EDIT).respond(
        200, content=CUTOUT, headers={"content-type": "image/png"}
    )
    await twin.call("edit", None, EditOptions(image_from_prompt_prompt="a red shoe"))
    assert text_fields(route.calls.last.request) == {"imageFromPrompt.prompt": "a red shoe"}


async def test_account(twin: Twin, respx_mock: respx.MockRouter) -> None:
    respx_mock.get(ACCOUNT).respond(
        200, json={"images": {"available": 83.4, "subscription": 100}, "plan": "basic"}
    )
    account = await twin.call("account")
    assert account == Account(images_available=83.4, images_subscription=100, plan="basic")


async def test_unsupported_attributes_become_a_warning(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    respx_mock.post(EDIT).respond(
        200,
        content=CUTOUT,
        headers={
            "content-type": "image/png",
            "pr-unsupported-attributes": "Unsupported attributes: foo.bar, baz",
        },
    )
    with pytest.warns(PhotoroomWarning, match=r"foo\.bar, baz"):
        result = await twin.call("edit", png(), EditOptions(extra_params={"foo.bar": 1, "baz": 2}))
    assert result.unsupported_attributes == ("foo.bar", "baz")


@pytest.mark.parametrize("value", ["1e400", "-1e400", "inf", "nan", "12abc", ""])
async def test_an_answer_paid_for_with_odd_numbers_in_its_headers_is_returned(
    twin: Twin, respx_mock: respx.MockRouter, value: str
) -> None:
    # "pr-texts-detected: 1e400" raised OverflowError from the answer of a billed call,
    # outside the SDK's errors, and the image paid for was lost
    headers = {"x-uncertainty-score": value, "pr-ai-background-seed": value}
    respx_mock.post(EDIT).respond(
        200,
        content=CUTOUT,
        headers={"content-type": "image/png", "pr-texts-detected": value, **headers},
    )
    result = await twin.call("edit", png(), EditOptions())
    assert result.content == CUTOUT
    assert (result.uncertainty_score, result.ai_background_seed, result.texts_detected) == (
        None,
        None,
        None,
    )


def _broken_stderr(*args: object, **kwargs: object) -> None:
    raise BrokenPipeError(errno.EPIPE, "Broken pipe")


@pytest.mark.parametrize("how", ["warnings-are-errors", "stderr-gone"])
async def test_a_warning_about_a_paid_answer_never_loses_it(
    twin: Twin, respx_mock: respx.MockRouter, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    # under "-W error" (or a test suite's filterwarnings = error) the warning was raised
    # from the answer of a call already billed, and the image paid for was thrown away
    respx_mock.post(EDIT).respond(
        200,
        content=CUTOUT,
        headers={"content-type": "image/png", "pr-unsupported-attributes": "Unsupported: baz"},
    )
    with warnings.catch_warnings():
        if how == "warnings-are-errors":
            warnings.simplefilter("error")
        else:
            warnings.simplefilter("always")
            warnings.showwarning = _broken_stderr
        result = await twin.call("edit", png(), EditOptions(extra_params={"baz": 2}))
    assert result.content == CUTOUT
    assert result.unsupported_attributes == ("baz",)
    why = (
        "warnings are errors here, but this call was paid for"
        if how == "warnings-are-errors"
        else "the warning could not be shown (BrokenPipeError: [Errno 32] Broken pipe)"
    )
    assert [r.getMessage() for r in caplog.records if r.name == "photoroom_bg"] == [
        f"Photoroom ignored unsupported parameters: baz ({why}: its result is kept)"
    ]


class _RaisingHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise RuntimeError("the handler broke")


async def test_a_log_handler_that_raises_never_loses_an_answer_paid_for(
    monkeypatch: pytest.MonkeyPatch,
    twin: Twin,
    respx_mock: respx.MockRouter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # the client's debug line for a billed answer ("POST /v2/edit -> 200") raised a handler's
    # error out of the call, and the image paid for was thrown away
    monkeypatch.setattr(_logs, "_reported", set())  # each failure is shown once
    respx_mock.post(EDIT).respond(200, content=CUTOUT, headers={"content-type": "image/png"})
    logger, handler = logging.getLogger("photoroom_bg"), _RaisingHandler(logging.DEBUG)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        result = await twin.call("edit", png(), EditOptions())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert result.content == CUTOUT
    assert "RuntimeError: the handler broke" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_sandbox_keys_mark_results_watermarked(
    kind: str, respx_mock: respx.MockRouter
) -> None:
    from .conftest import make_twin

    respx_mock.post(SEGMENT).respond(200, content=CUTOUT, headers={"content-type": "image/png"})
    twin = make_twin(kind, api_key="sandbox_" + API_KEY)
    assert twin.client.is_sandbox
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = await twin.call("remove_background", png())
    assert result.watermarked is True
    await twin.close()


async def test_result_save_writes_the_bytes(
    twin: Twin, respx_mock: respx.MockRouter, tmp_path: Path
) -> None:
    respx_mock.post(SEGMENT).respond(200, content=CUTOUT, headers={"content-type": "image/png"})
    result = await twin.call("remove_background", png())
    saved = result.save(tmp_path / "out" / "a.png")
    assert saved.read_bytes() == CUTOUT
    assert "IHDR" not in repr(result)  # the bytes are not in the repr
    assert f"size={len(CUTOUT)}" in repr(result)


async def test_lists_travel_as_one_field_per_item(twin: Twin, respx_mock: respx.MockRouter) -> None:
    get = respx_mock.get(EDIT).respond(200, content=CUTOUT, headers={"content-type": "image/png"})
    post = respx_mock.post(EDIT).respond(200, content=CUTOUT, headers={"content-type": "image/png"})
    urls = ["https://example.com/back.jpg", "https://example.com/side.jpg"]
    options = EditOptions(
        virtual_model_mode="ai.auto", virtual_model_additional_product_images=urls
    )
    await twin.call("edit", "https://example.com/front.jpg", options)
    params = get.calls.last.request.url.params
    assert params.get_list("virtualModel.additionalProductImages") == urls
    await twin.call("edit", png(), options)
    body = post.calls.last.request.content
    assert body.count(b'name="virtualModel.additionalProductImages"') == 2
    for url in urls:
        assert url.encode() in body


async def test_object_options_with_files_become_multipart_parts(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    from photoroom_bg import CustomImage

    route = respx_mock.post(EDIT).respond(
        200, content=CUTOUT, headers={"content-type": "image/png"}
    )
    scene = jpeg(5, 5)
    await twin.call(
        "edit",
        png(),
        EditOptions(
            virtual_model_mode="ai.auto", virtual_model_scene=CustomImage(image_file=scene)
        ),
    )
    fields = multipart_fields(route.calls.last.request)
    assert fields["virtualModel.scene.custom.imageFile"][1] == scene
    assert text_fields(route.calls.last.request) == {"virtualModel.mode": "ai.auto"}


async def test_rules_on_the_call_refuse_before_sending(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    from photoroom_bg.errors import InvalidImageError, ValidationError

    route = respx_mock.post(EDIT)
    with pytest.raises(ValidationError) as refused:
        await twin.call("edit", None, EditOptions(image_from_prompt_prompt="a shoe", scaling="fit"))
    assert (refused.value.parameter, refused.value.rule) == ("scaling", "scaling:needs-input")
    with pytest.raises(InvalidImageError) as missing:
        await twin.call("edit", None, EditOptions(padding=0.1))
    assert missing.value.rule == "input:required"
    assert not route.called


async def test_a_get_only_url_with_a_local_image_is_sent_with_a_warning(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(EDIT).respond(
        200, content=CUTOUT, headers={"content-type": "image/png"}
    )
    with pytest.warns(PhotoroomWarning, match=r"\[rule urls:get-only\]"):
        await twin.call("edit", png(), EditOptions(background_image_url="https://x/bg.png"))
    assert text_fields(route.calls.last.request) == {"background.imageUrl": "https://x/bg.png"}


async def test_segment_extra_params_keep_lists_and_files(
    twin: Twin, respx_mock: respx.MockRouter
) -> None:
    route = respx_mock.post(SEGMENT).respond(
        200, content=CUTOUT, headers={"content-type": "image/png"}
    )
    await twin.call(
        "remove_background",
        png(),
        SegmentOptions(extra_params={"future_list": ["a", "b"], "future_file": b"blob"}),
    )
    request = route.calls.last.request
    assert request.content.count(b'name="future_list"') == 2
    assert multipart_fields(request)["future_file"] == ("future_file", b"blob")


async def test_a_segment_call_encodes_its_options_once(
    twin: Twin, respx_mock: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The options are turned into fields once per call (a batch makes a call per image)."""
    from photoroom_bg import _wire

    options = SegmentOptions(size="hd", extra_params={"future_file": b"blob"})  # checked here
    encodes: list[object] = []
    encode = _wire.encode

    def counted(options: object) -> _wire.Encoded:
        encodes.append(options)
        return encode(options)

    monkeypatch.setattr(_wire, "encode", counted)
    route = respx_mock.post(SEGMENT).respond(
        200, content=CUTOUT, headers={"content-type": "image/png"}
    )
    await twin.call("remove_background", png(), options)
    assert encodes == [options]
    assert text_fields(route.calls.last.request) == {"size": "hd"}
    assert multipart_fields(route.calls.last.request)["future_file"] == ("future_file", b"blob")


def test_saving_onto_a_full_disk_keeps_the_file_it_would_replace(tmp_path: Path) -> None:
    # the file was opened for writing (emptied) before the bytes were known not to fit: the
    # earlier cut-out was lost, and half of the new one left in its place
    with small_disk(tmp_path / "disk", "256k") as disk:
        earlier = disk / "shoe.png"
        earlier.write_bytes(CUTOUT)
        fill(disk)
        big = ImageResult(png(128, 128) * 40)
        with pytest.raises(OSError, match="No space left") as caught:
            big.save(earlier)
        assert caught.value.errno == errno.ENOSPC
        assert earlier.read_bytes() == CUTOUT
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "shoe.png"]


def test_save_replaces_a_file_and_writes_through_a_link(tmp_path: Path) -> None:
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    assert ImageResult(CUTOUT).save(link) == link
    assert link.is_symlink()
    assert target.read_bytes() == CUTOUT
    target.chmod(0o600)
    assert ImageResult(png()).save(target).read_bytes() == png()
    assert target.stat().st_mode & 0o777 == 0o600  # the file replaced kept its permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.png", "real.png"]


async def test_edit_inputs_take_more_than_6000_px(twin: Twin, respx_mock: respx.MockRouter) -> None:
    # the 6,000 px cap of /v1/segment was applied to /v2/edit, which documents no pixel
    # limit: a wide input or background image was refused without a request
    route = respx_mock.post(EDIT).respond(
        200, content=CUTOUT, headers={"content-type": "image/png"}
    )
    wide = png(6001, 1)
    await twin.call("edit", wide, EditOptions(background_image_file=wide))
    fields = multipart_fields(route.calls.last.request)
    assert fields["imageFile"][1] == fields["background.imageFile"][1] == wide


@pytest.mark.parametrize(
    ("headers", "body", "content_type", "extension"),
    [
        ({"content-type": "image/png"}, jpeg(4, 4), "image/jpeg", ".jpg"),
        ({}, CUTOUT, "image/png", ".png"),
        ({"content-type": "application/octet-stream"}, CUTOUT, "image/png", ".png"),
        ({"content-type": "image/png"}, CUTOUT, "image/png", ".png"),
    ],
    ids=["jpeg-said-png", "no-content-type", "octet-stream", "png"],
)
async def test_a_results_type_comes_from_its_bytes(
    twin: Twin,
    respx_mock: respx.MockRouter,
    headers: dict[str, str],
    body: bytes,
    content_type: str,
    extension: str,
) -> None:
    # the type came from the header: a JPEG (export_format="jpg") under the spec's
    # "content-type: image/png" was saved as .png, a PNG without the header as .bin
    respx_mock.post(EDIT).respond(200, content=body, headers=headers)
    result = await twin.call("edit", png(), EditOptions(export_format="jpg"))
    assert (result.content_type, result.extension) == (content_type, extension)


async def test_integer_headers_are_read_exactly(twin: Twin, respx_mock: respx.MockRouter) -> None:
    # the seed went through float(): 9007199254740993 came back as 9007199254740992, a seed
    # that does not make the same background again
    respx_mock.post(EDIT).respond(
        200,
        content=CUTOUT,
        headers={
            "content-type": "image/png",
            "pr-ai-background-seed": "9007199254740993",
            "pr-texts-detected": " 3 ",
        },
    )
    result = await twin.call("edit", png(), EditOptions())
    assert (result.ai_background_seed, result.texts_detected) == (9007199254740993, 3)
