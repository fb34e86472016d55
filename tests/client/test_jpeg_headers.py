"""The JPEG header check without Pillow: what it accepts, Pillow accepts too, with the same
size; everything else still gets Pillow's verdict and words."""

from __future__ import annotations

import io
import random
import warnings
from pathlib import Path

import pytest
from PIL import Image

from photoroom_bg import _images
from photoroom_bg._images import _jpeg_header_size, validate_image
from photoroom_bg.errors import InvalidImageError

PHOTOS = sorted((Path(__file__).parents[2] / "examples" / "images").glob("*.jpg"))


def _jpeg(mode: str = "RGB", size: tuple[int, int] = (40, 30), **save: object) -> bytes:
    image = Image.linear_gradient("L").resize(size).convert(mode)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85, **save)  # type: ignore[arg-type]
    return out.getvalue()


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "camera maker"
    exif[0x0128] = 2
    exif[0x011A] = 300.0
    return exif.tobytes()


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _with(jpeg: bytes, *segments: bytes) -> bytes:
    """``jpeg`` with ``segments`` right after its start marker."""
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


PLAIN = {
    "baseline": _jpeg(),
    "progressive": _jpeg(progressive=True),
    "grey": _jpeg("L"),
    "cmyk": _jpeg("CMYK"),
    "exif": _jpeg(exif=_exif()),
    "icc": _jpeg(icc_profile=b"\0" * 3000),
    "thumbnail-inside": _with(_jpeg(), _segment(0xEF, _jpeg(size=(8, 8)))),
    "comment-and-fill": _with(_jpeg(), _segment(0xFE, b"made here"), b"\xff\xff"),
    **{f"photo-{p.stem}": p.read_bytes() for p in PHOTOS},
}


def _pillow_size(data: bytes) -> tuple[int, int] | None:
    """What Pillow's header check says: the size, or ``None`` when it refuses the image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
                return image.size
    except Exception:
        return None


@pytest.mark.parametrize("data", PLAIN.values(), ids=PLAIN.keys())
def test_plain_jpegs_are_checked_without_pillow(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = _pillow_size(data)
    assert size is not None
    assert _jpeg_header_size(data) == size

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Pillow opened a plain JPEG")

    monkeypatch.setattr(_images.Image, "open", refuse)
    assert validate_image(data, "segment") == "image/jpeg"


def _mutants(seed: int, count: int) -> list[bytes]:
    """Damaged copies of the plain JPEGs: bytes of their headers changed, dropped or
    repeated, and segments cut short, the ways a header is broken in practice."""
    rng = random.Random(seed)
    bases = list(PLAIN.values())
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(bases))
        scan = data.find(b"\xff\xda")
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(2, scan + 8 if scan > 0 else len(data))
            how = rng.random()
            if how < 0.5:
                data[at] = rng.choice([0x00, 0x01, 0x08, 0x0C, 0xC0, 0xC4, 0xD9, 0xDA, 0xFF])
            elif how < 0.7:
                data[at] = rng.randrange(256)
            elif how < 0.85:
                del data[at : at + rng.randint(1, 4)]
            else:
                data[at:at] = data[at : at + rng.randint(1, 4)]
        out.append(bytes(data))
    return out


def test_what_the_header_reader_accepts_pillow_accepts_with_the_same_size() -> None:
    read = refused = 0
    for data in _mutants(seed=12, count=3000):
        size = _jpeg_header_size(data)
        if size is None:
            refused += 1  # left to Pillow, as before
            continue
        read += 1
        assert _pillow_size(data) == size, data[:200]
    # both ways were exercised
    assert read > 500
    assert refused > 500


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_jpeg(size=(6001, 8)), "is 6001x8 px; the longest side may be at most 6000 px"),
        # 12-bit samples, which Pillow does not open
        (
            PLAIN["baseline"].replace(b"\xff\xc0\x00\x11\x08", b"\xff\xc0\x00\x11\x0c", 1),
            "corrupt or truncated",
        ),
        # a JFIF segment too short for its version: Pillow cannot open it
        (_with(_jpeg()[:2] + _jpeg()[20:], _segment(0xE0, b"JFIF")), "corrupt or truncated"),
    ],
    ids=["too-wide", "12-bit", "short-jfif"],
)
def test_other_jpegs_still_get_pillows_verdict(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        validate_image(data, "segment")


def test_junk_between_segments_is_left_to_pillow_which_skips_it() -> None:
    data = _jpeg()[:20] + b"junk" + _jpeg()[20:]
    assert _jpeg_header_size(data) is None
    assert _pillow_size(data) == (40, 30)
    assert validate_image(data, "segment") == "image/jpeg"
