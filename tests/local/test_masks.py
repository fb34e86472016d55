"""The bundled model separates subject from background on real photographs."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from photoroom_bg import SegmentOptions
from photoroom_bg.engines.local import LocalEngine

Box = tuple[float, float, float, float]
SUBJECT_AT_LEAST = 0.70 * 255
BACKGROUND_AT_MOST = 0.10 * 255


def open_image(content: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(content))
    picture.load()
    return picture


def box_mean(alpha: np.ndarray, box: Box) -> float:
    height, width = alpha.shape
    left, top, right, bottom = box
    region = alpha[int(top * height) : int(bottom * height), int(left * width) : int(right * width)]
    return float(region.mean())


@pytest.mark.parametrize("name", ["astronaut", "camera", "chelsea", "coffee", "rocket"])
async def test_mask_is_opaque_on_the_subject_and_clear_on_the_background(
    engine: LocalEngine,
    example: Callable[[str], bytes],
    subject_and_background: dict[str, tuple[Box, list[Box]]],
    name: str,
) -> None:
    result = await engine.process(example(name), SegmentOptions(channels="alpha"))

    alpha = np.asarray(open_image(result.content), np.float64)
    subject, backgrounds = subject_and_background[name]
    assert box_mean(alpha, subject) >= SUBJECT_AT_LEAST
    for background in backgrounds:
        assert box_mean(alpha, background) <= BACKGROUND_AT_MOST


async def test_cutout_alpha_is_the_mask_and_keeps_the_subject_colours(
    engine: LocalEngine, example: Callable[[str], bytes]
) -> None:
    data = example("coffee")

    cutout = open_image((await engine.process(data, SegmentOptions())).content)
    mask = open_image((await engine.process(data, SegmentOptions(channels="alpha"))).content)

    assert cutout.mode == "RGBA"
    assert mask.mode == "L"
    assert cutout.size == mask.size == open_image(data).size
    assert np.array_equal(np.asarray(cutout.getchannel("A")), np.asarray(mask))
    original = np.asarray(open_image(data).convert("RGB"), np.int16)
    rgb = np.asarray(cutout.convert("RGB"), np.int16)
    visible = np.asarray(mask) > 0
    assert np.array_equal(rgb[visible], original[visible])
    assert not rgb[~visible].any()
