"""Pixels in and out for :class:`~photoroom_bg.engines.LocalEngine`.

Decoding (with the ``size`` budget applied while decoding where the format allows), and turning
an image plus its mask into the bytes ``/v1/segment`` would return for the same
:class:`~photoroom_bg.SegmentOptions`.
"""

from __future__ import annotations

import io
import math
import re
import warnings

import attrs
import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

from photoroom_bg._images import pillow_message
from photoroom_bg.errors import InvalidImageError, ValidationError
from photoroom_bg.options import SegmentOptions

__all__ = ["MEGAPIXEL_BUDGETS", "RenderPlan", "decode", "parse_color", "render"]

#: Pixel budgets of ``SegmentOptions.size`` (``full`` keeps the input size).
MEGAPIXEL_BUDGETS: dict[str, int | None] = {
    "preview": 250_000,
    "medium": 1_500_000,
    "hd": 4_000_000,
    "full": None,
}
#: ``crop=True`` keeps the box around pixels whose alpha is above this (about 4 %).
CROP_THRESHOLD = 10
#: zlib level for PNG output: level 1 costs a quarter of the default's time, files ~10 % larger.
PNG_COMPRESS_LEVEL = 1
#: The most pixels an input may have: Pillow's own "possible decompression bomb" threshold
#: (it only warns below twice that). A PNG or WebP is decoded whole whatever ``size`` asks,
#: and 13,000 x 13,000 pixels in a 657 KB PNG took 2 GB of memory per image.
MAX_DECODED_PIXELS = 89_478_485
LOSSY_QUALITY = 90

_CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
_HEX = re.compile(r"[0-9a-fA-F]{3,4}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8}")
_WHITE = (255, 255, 255)

Color = tuple[int, int, int] | tuple[int, int, int, int]


@attrs.frozen
class RenderPlan:
    """Validated :class:`SegmentOptions`, with the colour already parsed."""

    options: SegmentOptions
    bg_color: Color | None

    @property
    def max_pixels(self) -> int | None:
        """The pixel budget of ``options.size``, or ``None`` for ``full``."""
        return MEGAPIXEL_BUDGETS[self.options.size]


def parse_color(value: str) -> Color:
    """Parse ``bg_color``: hex with or without ``#`` (3, 4, 6 or 8 digits) or a CSS colour name.

    Raises:
        ValidationError: the value is neither.
    """
    text = value.strip()
    if _HEX.fullmatch(text):
        text = "#" + text
    try:
        return ImageColor.getrgb(text)
    except ValueError:
        raise ValidationError(
            f"bg_color {value!r} is not a colour: use hex such as '#FF00FF' or 'FF00FF', "
            "or an HTML colour name such as 'white'"
        ) from None


def decode(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode image bytes into an upright RGB image of at most ``max_pixels`` pixels.

    Raises:
        InvalidImageError: empty, truncated, corrupt or of a format Pillow cannot read.
    """
    if not data:
        raise InvalidImageError("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # refused below, with a message of ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
        _check_pixels(*picture.size)
        target = _fit(picture.size, max_pixels)
        if target != picture.size:
            picture.draft("RGB", target)  # JPEG decodes straight at 1/2, 1/4 or 1/8 scale
        picture.load()
    except Image.DecompressionBombError as exc:  # past twice Pillow's threshold: its refusal
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(claimed.group(1)) / 1e6:.0f} MP" if claimed else "more pixels"
        raise InvalidImageError(
            f"the image claims {pixels}, over the {MAX_DECODED_PIXELS / 1e6:.0f} MP this engine "
            "decodes: a few hundred bytes can claim that many (a decompression bomb); shrink "
            "a real photo that large first"
        ) from None
    except UnidentifiedImageError:
        raise InvalidImageError(
            f"cannot read the image ({len(data)} bytes): it is no format Pillow reads. Send "
            "PNG, JPEG, WEBP or another format Pillow reads"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(
            f"the image is corrupt or truncated ({len(data)} bytes): {pillow_message(exc)}"
        ) from None
    try:  # Pillow reads a PNG's or WebP's EXIF block only here: a malformed one is ignored
        upright = ImageOps.exif_transpose(picture)
    except Exception:  # (a SyntaxError "not a TIFF file" escaped the engine)
        upright = picture
    rgb = _as_rgb(upright)
    target = _fit(rgb.size, max_pixels)
    if target != rgb.size:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return rgb


def _check_pixels(width: int, height: int) -> None:
    """Refuse an image of more than :data:`MAX_DECODED_PIXELS`, before it is decoded."""
    if width * height > MAX_DECODED_PIXELS:
        raise InvalidImageError(
            f"the image is {width}x{height} pixels ({width * height / 1e6:.0f} MP), over "
            f"the {MAX_DECODED_PIXELS / 1e6:.0f} MP this engine decodes: a few hundred "
            "kilobytes of PNG can hold that many (a decompression bomb); shrink a real "
            "photo that large first"
        )


def _as_rgb(picture: Image.Image) -> Image.Image:
    """``picture`` in RGB. A 16- or 32-bit grey (``I;16``, ``I``, ``F``) is scaled to 8 bits
    first: Pillow's own conversion clips it, and a 16-bit grey PNG came out all white."""
    if picture.mode == "RGB":
        return picture
    if picture.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(picture, dtype=np.float64)
        low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
        if picture.mode == "F" and low >= 0.0 and high <= 1.0:
            low, top = 0.0, 1.0  # light as a fraction
        elif low >= 0.0 and high <= 65535.0:
            low, top = 0.0, 65535.0  # 16 bits, as a 16-bit PNG or TIFF holds them
        else:
            top = max(high, low + 1.0)  # other ranges: stretched over 8 bits
        scaled = np.clip((values - low) / (top - low) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    return picture.convert("RGB")


def _fit(size: tuple[int, int], max_pixels: int | None) -> tuple[int, int]:
    width, height = size
    if max_pixels is None or width * height <= max_pixels:
        return size
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, int(width * scale)), max(1, int(height * scale))


def render(rgb: Image.Image, mask: Image.Image, plan: RenderPlan) -> tuple[bytes, str]:
    """Cut ``rgb`` out with ``mask`` (mode ``L``, same size) and encode it as ``plan`` asks.

    Returns:
        The encoded bytes and their MIME type.
    """
    options = plan.options
    if options.crop:
        box = mask.point([0] * (CROP_THRESHOLD + 1) + [255] * (255 - CROP_THRESHOLD)).getbbox()
        if box is not None:
            rgb, mask = rgb.crop(box), mask.crop(box)
    if options.channels == "alpha":
        picture = mask
    elif plan.bg_color is not None:
        picture = _on_color(rgb, mask, plan.bg_color)
    elif options.format == "jpg":
        picture = _on_color(rgb, mask, _WHITE)
    else:
        picture = _transparent(rgb, mask)
    if options.format == "jpg" and picture.mode == "RGBA":
        picture = _on_color(picture.convert("RGB"), picture.getchannel("A"), _WHITE)
    buffer = io.BytesIO()
    if options.format == "png":
        picture.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    elif options.format == "jpg":
        picture.save(buffer, "JPEG", quality=LOSSY_QUALITY)
    else:
        picture.save(buffer, "WEBP", quality=LOSSY_QUALITY)
    return buffer.getvalue(), _CONTENT_TYPES[options.format]


def _transparent(rgb: Image.Image, mask: Image.Image) -> Image.Image:
    """RGBA with ``mask`` as alpha; fully transparent pixels get black RGB (compresses well)."""
    pixels = np.empty((rgb.height, rgb.width, 4), np.uint8)
    pixels[..., :3] = np.asarray(rgb)
    alpha = np.asarray(mask)
    pixels[..., 3] = alpha
    pixels[alpha == 0, :3] = 0
    return Image.fromarray(pixels, "RGBA")


def _on_color(rgb: Image.Image, mask: Image.Image, color: Color) -> Image.Image:
    if len(color) == 4 and color[3] < 255:
        background = Image.new("RGBA", rgb.size, color)
        return Image.alpha_composite(background, _transparent(rgb, mask))
    return Image.composite(rgb, Image.new("RGB", rgb.size, color[:3]), mask)
