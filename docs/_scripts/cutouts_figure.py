"""Make the picture of the docs and the README: the example photos above their cut-outs.

Runs the offline engine (``LocalEngine``, the bundled ``u2netp`` model) on
``examples/images/*.jpg`` and lays each photo out above its cut-out, shown on a checkerboard
so the transparency is visible. Nothing is drawn by hand::

    python docs/_scripts/cutouts_figure.py            # writes docs/_static/cutouts.jpg

The docs build runs it when the picture is missing, and ``tests/test_doc_examples.py`` checks
that the committed picture is what this script makes.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "examples" / "images"
OUTPUT = ROOT / "docs" / "_static" / "cutouts.jpg"

ROW_HEIGHT = 180  # pixels per thumbnail row
GAP = 12  # between thumbnails and around the picture
SQUARE = 10  # checkerboard square
LIGHT, DARK = (255, 255, 255), (214, 214, 214)


def checkerboard(size: tuple[int, int]) -> Image.Image:
    """A light grey checkerboard, the usual way of showing transparency."""
    board = Image.new("RGB", size, LIGHT)
    for top in range(0, size[1], SQUARE):
        for left in range(0, size[0], SQUARE):
            if (left // SQUARE + top // SQUARE) % 2:
                board.paste(DARK, (left, top, left + SQUARE, top + SQUARE))
    return board


async def cutouts(paths: list[Path]) -> list[Image.Image]:
    """Each photo's cut-out, made by the offline engine, as RGBA images."""
    import io

    from photoroom_bg import SegmentOptions
    from photoroom_bg.engines.local import LocalEngine

    async with LocalEngine() as engine:
        results = await asyncio.gather(
            *(engine.process(path.read_bytes(), SegmentOptions()) for path in paths)
        )
    return [Image.open(io.BytesIO(result.content)).convert("RGBA") for result in results]


def thumbnail(image: Image.Image) -> Image.Image:
    width = round(image.width * ROW_HEIGHT / image.height)
    return image.resize((width, ROW_HEIGHT), Image.Resampling.LANCZOS)


def make_figure(photos: Path = PHOTOS) -> Image.Image:
    """The photos (top row) above their cut-outs on a checkerboard (bottom row)."""
    paths = sorted(photos.glob("*.jpg"))
    if not paths:
        raise SystemExit(f"no photos in {photos}")
    originals = [thumbnail(Image.open(path).convert("RGB")) for path in paths]
    cut = [thumbnail(image) for image in asyncio.run(cutouts(paths))]
    width = sum(image.width for image in originals) + GAP * (len(originals) + 1)
    figure = Image.new("RGB", (width, 2 * ROW_HEIGHT + 3 * GAP), LIGHT)
    left = GAP
    for original, cutout in zip(originals, cut, strict=True):
        figure.paste(original, (left, GAP))
        below = checkerboard(cutout.size)
        below.paste(cutout, (0, 0), cutout)
        figure.paste(below, (left, ROW_HEIGHT + 2 * GAP))
        left += original.width + GAP
    return figure


def save(figure: Image.Image, path: Path) -> None:
    """Write ``figure`` as the docs keep it: a JPEG (a fifth of the PNG's size)."""
    figure.save(path, "JPEG", quality=85, optimize=True, progressive=True)


def main() -> None:
    """Write the picture (``--output``, default ``docs/_static/cutouts.jpg``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save(make_figure(), args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
