"""LocalEngine honours SegmentOptions like /v1/segment, and refuses what it cannot do."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Callable

import attrs
import numpy as np
import pytest
from PIL import Image

from photoroom_bg import SegmentOptions
from photoroom_bg.engines.local import LocalEngine
from photoroom_bg.errors import InvalidImageError, ValidationError


def open_image(content: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(content))
    picture.load()
    return picture


def encode(picture: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **params)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "channels", "content_type", "mode"),
    [
        ("png", "rgba", "image/png", "RGBA"),
        ("png", "alpha", "image/png", "L"),
        ("webp", "rgba", "image/webp", "RGBA"),
        ("jpg", "rgba", "image/jpeg", "RGB"),
        ("jpg", "alpha", "image/jpeg", "L"),
    ],
)
async def test_format_and_channels_pick_the_encoding(
    engine: LocalEngine,
    example: Callable[[str], bytes],
    fmt: str,
    channels: str,
    content_type: str,
    mode: str,
) -> None:
    options = SegmentOptions(format=fmt, channels=channels)  # type: ignore[arg-type]

    result = await engine.process(example("chelsea"), options)

    picture = open_image(result.content)
    assert result.content_type == content_type
    assert picture.format == {"png": "PNG", "webp": "WEBP", "jpg": "JPEG"}[fmt]
    assert picture.mode == mode
    assert picture.size == open_image(example("chelsea")).size


async def test_jpeg_without_bg_color_is_composited_on_white(
    engine: LocalEngine, example: Callable[[str], bytes]
) -> None:
    result = await engine.process(example("rocket"), SegmentOptions(format="jpg"))

    pixels = np.asarray(open_image(result.content), np.int16)
    corner = pixels[:30, :30].reshape(-1, 3).mean(axis=0)
    assert (corner > 245).all()


@pytest.mark.parametrize("color", ["#FF0000", "FF0000", "f00", "red"])
async def test_bg_color_fills_the_background(
    engine: LocalEngine, example: Callable[[str], bytes], color: str
) -> None:
    result = await engine.process(example("rocket"), SegmentOptions(bg_color=color))

    picture = open_image(result.content)
    assert picture.mode == "RGB"
    corner = np.asarray(picture, np.int16)[:30, :30].reshape(-1, 3).mean(axis=0)
    assert corner[0] > 245
    assert corner[1] < 10
    assert corner[2] < 10


async def test_bg_color_with_alpha_keeps_a_translucent_background(
    engine: LocalEngine, example: Callable[[str], bytes]
) -> None:
    result = await engine.process(example("rocket"), SegmentOptions(bg_color="#0000FF80"))

    picture = open_image(result.content)
    assert picture.mode == "RGBA"
    red, green, blue, alpha = np.asarray(picture, np.int16)[:30, :30].reshape(-1, 4).mean(axis=0)
    assert 120 <= alpha <= 136
    assert blue > 245
    assert red < 10
    assert green < 10


@pytest.mark.parametrize("color", ["not-a-colour", "#12345", ""])
def test_a_malformed_bg_color_is_refused_when_options_are_built(color: str) -> None:
    with pytest.raises(ValidationError, match=r"must be a hex colour .* or a colour name"):
        SegmentOptions(bg_color=color)


async def test_an_unknown_colour_name_is_refused_with_a_hint(engine: LocalEngine) -> None:
    with pytest.raises(ValidationError, match=r"not a colour.*HTML colour name"):
        await engine.process(b"never decoded", SegmentOptions(bg_color="GGGGGG"))


async def test_crop_keeps_only_the_subject(
    engine: LocalEngine, example: Callable[[str], bytes]
) -> None:
    data = example("rocket")
    full = open_image((await engine.process(data, SegmentOptions(channels="alpha"))).content)

    cropped = open_image((await engine.process(data, SegmentOptions(crop=True))).content)

    assert cropped.width < full.width / 3
    assert cropped.height < full.height
    kept = np.asarray(cropped.getchannel("A"))
    assert kept.max() == 255
    assert (np.asarray(full) > 10).sum() == (kept > 10).sum()  # no visible pixel was cut off


@pytest.mark.parametrize(("size", "budget"), [("preview", 250_000), ("medium", 1_500_000)])
async def test_size_downscales_to_the_megapixel_budget(
    engine: LocalEngine, example: Callable[[str], bytes], size: str, budget: int
) -> None:
    large = open_image(example("coffee")).resize((1800, 1200))

    result = await engine.process(encode(large, "JPEG"), SegmentOptions(size=size))  # type: ignore[arg-type]

    picture = open_image(result.content)
    assert 0.97 * budget <= picture.width * picture.height <= budget
    assert abs(picture.width / picture.height - 1.5) < 0.01


@pytest.mark.parametrize("size", ["hd", "full"])
async def test_size_never_upscales(
    engine: LocalEngine, example: Callable[[str], bytes], size: str
) -> None:
    result = await engine.process(example("coffee"), SegmentOptions(size=size))  # type: ignore[arg-type]

    assert open_image(result.content).size == open_image(example("coffee")).size


async def test_exif_orientation_is_applied(
    engine: LocalEngine, example: Callable[[str], bytes]
) -> None:
    picture = open_image(example("chelsea"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rotated = encode(picture, "JPEG", exif=exif.tobytes())

    result = await engine.process(rotated, SegmentOptions())

    assert open_image(result.content).size == (picture.height, picture.width)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK"])
async def test_any_pillow_mode_is_accepted(engine: LocalEngine, mode: str) -> None:
    picture = Image.new("RGB", (64, 48), (200, 30, 30)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"

    result = await engine.process(encode(picture, fmt), SegmentOptions())

    assert open_image(result.content).size == (64, 48)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not an image", "cannot read the image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot read the image|corrupt"),
    ],
)
async def test_unusable_bytes_raise_invalid_image_error(
    engine: LocalEngine, data: bytes, message: str
) -> None:
    with pytest.raises(InvalidImageError, match=message):
        await engine.process(data, SegmentOptions())


async def test_an_image_of_too_many_pixels_is_refused_before_it_is_decoded(
    engine: LocalEngine,
) -> None:
    # a PNG of a few hundred kilobytes claiming 13,000 x 13,000 pixels was decoded whole
    # whatever the size asked: about 2 GB of memory for one image, with Pillow's warning only
    buffer = io.BytesIO()
    Image.new("1", (13_000, 13_000)).save(buffer, "PNG")
    assert len(buffer.getvalue()) < 1_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused with our message, not Pillow's warning too
        with pytest.raises(InvalidImageError, match=r"13000x13000 pixels \(169 MP\), over the"):
            await engine.process(buffer.getvalue(), SegmentOptions(size="preview"))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # past twice Pillow's threshold Pillow refused first: "Send PNG, JPEG..." for a PNG
        (_png_header(65_500, 65_500), r"claims 4290 MP, over the 89 MP this engine decodes"),
        # "cannot identify image file <_io.BytesIO object at 0x7f...>"
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", r"it is no format Pillow reads"),
    ],
    ids=["a header of 65,500 x 65,500", "an SVG"],
)
async def test_unreadable_images_are_refused_with_a_message_of_the_engines(
    engine: LocalEngine, data: bytes, message: str
) -> None:
    with pytest.raises(InvalidImageError, match=message) as refused:
        await engine.process(data, SegmentOptions())
    assert "object at 0x" not in str(refused.value)


async def test_a_png_with_a_malformed_exif_block_is_processed(engine: LocalEngine) -> None:
    # Pillow reads a PNG's EXIF only when asked for the orientation: a raw SyntaxError ("not
    # a TIFF file") escaped the engine, and the batch filed the job as unexpected
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "PNG", exif=b"XXXXXXXXXXXXXXXX")
    result = await engine.process(buffer.getvalue(), SegmentOptions())
    assert open_image(result.content).size == (64, 48)


async def test_a_16_bit_grey_png_keeps_its_tones(engine: LocalEngine) -> None:
    # Pillow's convert("RGB") clips 16-bit grey: every visible pixel of the cut-out was 255
    levels = (np.linspace(20, 128, 64 * 48).reshape(48, 64) * 257).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, "PNG")
    result = await engine.process(buffer.getvalue(), SegmentOptions(channels="rgba"))
    pixels = np.asarray(open_image(result.content).convert("RGBA"))
    visible = pixels[pixels[..., 3] > 0][:, :3]
    assert visible.size
    assert visible.min() >= 15  # the darkest, 20 in 8 bits (it was 255)
    assert visible.max() <= 133


async def test_a_truncated_jpeg_raises_invalid_image_error(
    engine: LocalEngine, example: Callable[[str], bytes]
) -> None:
    data = example("astronaut")

    with pytest.raises(InvalidImageError, match="corrupt or truncated"):
        await engine.process(data[: len(data) // 2], SegmentOptions())


async def test_despill_is_refused(engine: LocalEngine, example: Callable[[str], bytes]) -> None:
    with pytest.raises(ValidationError, match="despill=True is not available offline"):
        await engine.process(example("coffee"), SegmentOptions(despill=True))


async def test_options_other_than_segment_options_are_refused(engine: LocalEngine) -> None:
    @attrs.frozen
    class EditLike:
        background_color: str = "FFFFFF"

    with pytest.raises(ValidationError, match="takes SegmentOptions, not EditLike"):
        await engine.process(b"never decoded", EditLike())
