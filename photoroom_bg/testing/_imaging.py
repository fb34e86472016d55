"""The emulator's image work: a model-free segmenter and the options applied to its mask."""

from __future__ import annotations

import io
import math
import re
from typing import Protocol

from PIL import Image, ImageColor, ImageDraw, ImageFilter, ImageOps

__all__ = [
    "BorderColorSegmenter",
    "ImageError",
    "Segmenter",
    "decode",
    "encode",
    "render_edit",
    "render_segment",
]

SIZE_BUDGETS = {"preview": 0.25e6, "medium": 1.5e6, "hd": 4e6}
_FORMATS = {
    "png": ("PNG", "image/png"),
    "jpg": ("JPEG", "image/jpeg"),
    "jpeg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
    "avif": ("AVIF", "image/avif"),
}


class ImageError(ValueError):
    """The input cannot be decoded, or a value cannot be applied (becomes a 400)."""


class Segmenter(Protocol):
    """Computes a foreground mask: an RGB image in, an ``L`` mask (255 = subject) out."""

    def __call__(self, image: Image.Image) -> Image.Image:
        """Return the mask of ``image``, the same size."""
        ...


class BorderColorSegmenter:
    """Deterministic, model-free: pixels far from the median border colour are the subject.

    Args:
        low: colour distance at and below which a pixel is background.
        high: distance at and above which a pixel is fully subject (linear ramp between).
    """

    def __init__(self, low: float = 24.0, high: float = 64.0) -> None:
        self.low = low
        self.high = high

    def __call__(self, image: Image.Image) -> Image.Image:
        import numpy as np

        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        border = np.concatenate(
            [pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]], axis=0
        ).reshape(-1, 3)
        background = np.median(border, axis=0)
        distance = np.sqrt(((pixels - background) ** 2).sum(axis=2))
        alpha = np.clip((distance - self.low) / (self.high - self.low), 0.0, 1.0)
        mask = Image.fromarray((alpha * 255).round().astype(np.uint8), "L")
        return mask.filter(ImageFilter.BoxBlur(1))


def decode(data: bytes) -> Image.Image:
    """Open an input image (EXIF orientation applied) or raise :class:`ImageError`."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:
        raise ImageError(f"Could not decode the image: {type(exc).__name__}") from None
    try:  # a malformed EXIF block (Pillow reads it only here) is no reason to refuse
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def input_problem(data: bytes, formats: tuple[str, ...], max_side: int | None) -> str | None:
    """Why an input is refused by the API's contract (its format is not one of ``formats``,
    Pillow's names; a side is over ``max_side``), read from its header; ``None`` if it is
    not (an image that cannot be read is :func:`decode`'s to refuse)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, size = image.format, image.size
    except Exception:
        return None
    if fmt not in formats:
        return f"Unsupported image format {fmt}: send {', '.join(formats)}"
    if max_side is not None and max(size) > max_side:
        return f"Image is {size[0]}x{size[1]}: the longest side may be at most {max_side} px"
    return None


def encode(image: Image.Image, fmt: str) -> tuple[bytes, str]:
    """Encode like Photoroom: PNG, JPEG (q80, no alpha), WEBP/AVIF (q90)."""
    pil_format, mime = _FORMATS[fmt]
    out = io.BytesIO()
    if pil_format == "JPEG":
        if image.mode in ("RGBA", "LA"):
            flat = Image.new("RGB", image.size, "white")
            flat.paste(image, mask=image.getchannel("A"))
            image = flat
        image.convert("RGB").save(out, "JPEG", quality=80)
    elif pil_format == "PNG":
        image.save(out, "PNG", compress_level=1)
    else:
        image.save(out, pil_format, quality=90)
    return out.getvalue(), mime


def parse_color(value: str, *, hash_required: bool) -> tuple[int, int, int, int]:
    """A colour as RGBA: hex (with or without ``#`` as the endpoint expects) or a name."""
    text = value.strip()
    bare = text.lstrip("#")
    if re.fullmatch(r"[0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8}", bare) and (
        text.startswith("#") or not hash_required
    ):
        if len(bare) == 3:
            bare = "".join(c * 2 for c in bare)
        if len(bare) == 6:
            bare += "ff"
        return tuple(int(bare[i : i + 2], 16) for i in (0, 2, 4, 6))  # type: ignore[return-value]
    try:
        rgb = ImageColor.getrgb(text)
    except ValueError:
        raise ImageError(f"Invalid color: {value}") from None
    return (*rgb[:3], 255)


def _budget(image: Image.Image, pixels: float) -> Image.Image:
    if image.width * image.height <= pixels:
        return image
    scale = math.sqrt(pixels / (image.width * image.height))
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


def _watermark(image: Image.Image) -> Image.Image:
    marked = image.convert("RGBA")
    layer = Image.new("RGBA", marked.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    step = max(24, min(marked.size) // 4)
    for offset in range(-marked.height, marked.width, step):
        draw.line(
            [(offset, marked.height), (offset + marked.height, 0)], fill=(255, 0, 80, 110), width=3
        )
    for y in range(4, marked.height, step):
        draw.text((4, y), "PHOTOROOM SANDBOX", fill=(255, 0, 80, 200))
    return Image.alpha_composite(marked, layer)


def _cutout(image: Image.Image, mask: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    rgba.putalpha(mask)
    return rgba


def render_segment(
    data: bytes,
    fields: dict[str, str],
    segmenter: Segmenter,
    *,
    sandbox: bool,
) -> tuple[bytes, str, float]:
    """Apply ``/v1/segment`` options; return ``(body, content type, uncertainty score)``."""
    image = decode(data)
    image = _budget(image, SIZE_BUDGETS.get(fields.get("size", "full"), math.inf))
    mask = segmenter(image.convert("RGB"))
    if fields.get("crop") == "true":
        box = mask.point(lambda v: 255 if v > 10 else 0).getbbox()
        if box:
            image, mask = image.crop(box), mask.crop(box)
    if fields.get("channels") == "alpha":
        result = mask
    else:
        result = _cutout(image, mask)
        if "bg_color" in fields:
            color = parse_color(fields["bg_color"], hash_required=True)
            canvas = Image.new("RGBA", result.size, color)
            result = Image.alpha_composite(canvas, result)
    if sandbox:
        result = _watermark(result)
    body, mime = encode(result, fields.get("format", "png"))
    return body, mime, uncertainty(mask)


def uncertainty(mask: Image.Image) -> float:
    """Share of mask pixels that are neither clearly subject nor clearly background."""
    histogram = mask.histogram()
    unsure = sum(histogram[16:240])
    return round(unsure / max(1, mask.width * mask.height), 4)


def _spacing(value: str | None, extent: int) -> int:
    if value is None:
        return 0
    text = value.strip()
    if text.endswith("px"):
        return int(float(text[:-2]))
    if text.endswith("%"):
        return int(extent * float(text[:-1]) / 100)
    return int(extent * float(text))


def _output_size(value: str, subject: Image.Image, original: Image.Image) -> tuple[int, int]:
    if value in ("auto", "originalImage"):
        return original.size
    if value == "croppedSubject":
        return subject.size
    match = re.fullmatch(r"(\d+)x(\d+)", value)
    if not match:
        raise ImageError(f"outputSize must be auto, originalImage, croppedSubject or WxH: {value}")
    width, height = int(match.group(1)), int(match.group(2))
    if not (1 <= width <= 10000 and 1 <= height <= 10000):
        raise ImageError(f"outputSize out of range: {value}")
    return width, height


def render_edit(
    data: bytes,
    fields: dict[str, str],
    segmenter: Segmenter,
    *,
    sandbox: bool,
) -> tuple[bytes, str, float]:
    """Apply the emulated ``/v2/edit`` options; return ``(body, content type, score)``."""
    original = decode(data).convert("RGBA")
    if fields.get("removeBackground", "true") == "true":
        mask = segmenter(original.convert("RGB"))
        subject = _cutout(original, mask)
        box = mask.point(lambda v: 255 if v > 10 else 0).getbbox() or (0, 0, *original.size)
        subject = subject.crop(box)
    else:
        mask = Image.new("L", original.size, 255)
        subject = original
    width, height = _output_size(fields.get("outputSize", "auto"), subject, original)
    pad_x = _spacing(fields.get("padding"), width)
    pad_y = _spacing(fields.get("padding"), height)
    left = _spacing(fields.get("paddingLeft"), width) if "paddingLeft" in fields else pad_x
    right = _spacing(fields.get("paddingRight"), width) if "paddingRight" in fields else pad_x
    top = _spacing(fields.get("paddingTop"), height) if "paddingTop" in fields else pad_y
    bottom = _spacing(fields.get("paddingBottom"), height) if "paddingBottom" in fields else pad_y
    room = (max(1, width - left - right), max(1, height - top - bottom))
    scale = min(room[0] / subject.width, room[1] / subject.height)
    placed = subject.resize(
        (max(1, int(subject.width * scale)), max(1, int(subject.height * scale))),
        Image.Resampling.BILINEAR,
    )
    background = (0, 0, 0, 0)
    if "background.color" in fields:
        background = parse_color(fields["background.color"], hash_required=False)
    canvas = Image.new("RGBA", (width, height), background)
    x = left + (room[0] - placed.width) // 2
    y = top + (room[1] - placed.height) // 2
    canvas.alpha_composite(placed, (x, y))
    if sandbox:
        canvas = _watermark(canvas)
    body, mime = encode(canvas, fields.get("export.format", "png"))
    return body, mime, uncertainty(mask)
