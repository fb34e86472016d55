"""Finding, verifying and pre/post-processing the models LocalEngine runs."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from PIL import Image

from photoroom_bg import SegmentOptions
from photoroom_bg.engines._onnx_graph import use_half_pixel_resize
from photoroom_bg.engines._onnx_models import (
    BUNDLED_DIR,
    U2NETP_SHA256,
    BiRefNetFamily,
    IsNetFamily,
    ModelSpec,
    U2NetFamily,
    available_models,
    resolve_model,
)
from photoroom_bg.engines.local import LocalEngine
from photoroom_bg.errors import ConfigurationError

from ..disks import no_file_at

BUNDLED = BUNDLED_DIR / "u2netp.onnx"


def test_the_bundled_model_matches_its_recorded_digest_and_licence() -> None:
    assert hashlib.sha256(BUNDLED.read_bytes()).hexdigest() == U2NETP_SHA256
    notice = (BUNDLED_DIR / "NOTICE").read_text()
    assert "Xuebin Qin" in notice
    assert U2NETP_SHA256 in notice
    assert "Apache License" in (BUNDLED_DIR / "LICENSE-APACHE-2.0").read_text()


def test_a_file_that_does_not_match_its_digest_is_refused(tmp_path: Path) -> None:
    tampered = tmp_path / "u2netp.onnx"
    tampered.write_bytes(BUNDLED.read_bytes()[:-1] + b"\x00")

    with pytest.raises(ConfigurationError, match="does not match the expected sha256"):
        ModelSpec("u2netp", U2NetFamily, tampered, U2NETP_SHA256).read_verified()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_model_path_that_is_a_pipe_or_a_device_is_refused_unread(
    tmp_path: Path, kind: str
) -> None:
    # read_bytes on a named pipe held the load forever, and on /dev/zero read until the
    # memory ran out
    path = tmp_path / "model.onnx"
    what = re.escape(no_file_at(path, kind))
    with pytest.raises(ConfigurationError, match=f"cannot read model file .*: it is {what}"):
        ModelSpec("u2netp", U2NetFamily, path, None).read_verified()


def test_an_unknown_name_lists_the_known_models() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown local model 'u3net'.*u2netp.*isnet"):
        LocalEngine("u3net")


def test_a_model_rembg_has_not_downloaded_is_a_clear_error(empty_model_dirs: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        LocalEngine("isnet-general-use")

    message = str(caught.value)
    assert "isnet-general-use.onnx not found" in message
    assert str(empty_model_dirs) in message
    assert "available now: u2netp" in message


def test_a_missing_model_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is not a file"):
        LocalEngine(model_path=tmp_path / "nowhere.onnx")


@pytest.mark.parametrize("layout", ["u2net_home", "rembg_models"])
async def test_models_rembg_downloaded_are_found_by_name(
    empty_model_dirs: Path, example: Callable[[str], bytes], layout: str
) -> None:
    # silueta is a U²-Net variant with the same input and output; u2netp's file stands in.
    if layout == "u2net_home":
        target = empty_model_dirs / "silueta.onnx"
    else:
        target = empty_model_dirs / "models" / "silueta" / "silueta.onnx"
        target.parent.mkdir(parents=True)
    shutil.copy(BUNDLED, target)

    assert available_models() == LocalEngine.available_models() == ["u2netp", "silueta"]
    async with LocalEngine("silueta") as silueta, LocalEngine() as bundled:
        assert silueta.name == "local:silueta"
        options = SegmentOptions(channels="alpha")
        found = await silueta.process(example("coffee"), options)
        reference = await bundled.process(example("coffee"), options)
    assert found.content == reference.content


async def test_model_path_loads_an_explicit_file(
    tmp_path: Path, example: Callable[[str], bytes]
) -> None:
    path = tmp_path / "my-model.onnx"
    shutil.copy(BUNDLED, path)

    async with LocalEngine("u2net", model_path=path) as engine:
        result = await engine.process(example("chelsea"), SegmentOptions())

    assert engine.name == "local:my-model"
    assert result.content_type == "image/png"


async def test_a_file_that_is_not_a_model_fails_on_first_use(
    tmp_path: Path, example: Callable[[str], bytes]
) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf")

    async with LocalEngine(model_path=path) as engine:
        with pytest.raises(ConfigurationError, match="cannot load model"):
            await engine.process(example("chelsea"), SegmentOptions())


async def test_a_family_whose_input_does_not_fit_the_model_is_refused(
    example: Callable[[str], bytes],
) -> None:
    async with LocalEngine("isnet", model_path=BUNDLED) as engine:
        with pytest.raises(
            ConfigurationError, match=r"\(1, 3, 1024, 1024\): name the file.s family \(model="
        ):
            await engine.process(example("chelsea"), SegmentOptions())


def test_resolve_model_accepts_a_family_only_with_a_path() -> None:
    with pytest.raises(ConfigurationError, match="unknown local model 'isnet'"):
        resolve_model("isnet")
    assert resolve_model("birefnet", BUNDLED).family is BiRefNetFamily


@pytest.mark.parametrize("family", [U2NetFamily, IsNetFamily, BiRefNetFamily])
def test_prepare_normalises_like_rembg(family: type[U2NetFamily]) -> None:
    pixels = np.random.default_rng(7).integers(0, 200, (40, 60, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels, "RGB")

    tensor = family.prepare(picture)

    side = family.input_size
    resized = np.asarray(picture.resize((side, side), Image.Resampling.LANCZOS), np.float64)
    scaled = resized / resized.max()
    expected = (scaled - np.array(family.mean)) / np.array(family.std)
    assert tensor.shape == (1, 3, side, side)
    assert tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0], expected.transpose(2, 0, 1), atol=1e-5)


def test_read_mask_stretches_the_first_channel_to_the_full_range() -> None:
    output = np.linspace(0.2, 0.6, 12, dtype=np.float32).reshape(1, 1, 3, 4)

    mask = U2NetFamily.read_mask(output)

    assert mask.dtype == np.uint8
    assert mask.shape == (3, 4)
    assert mask.min() == 0
    assert mask.max() == 255
    assert (np.diff(mask.ravel().astype(int)) > 0).all()


def test_read_mask_of_a_flat_output_is_empty() -> None:
    assert not U2NetFamily.read_mask(np.full((1, 1, 5, 5), 0.3, np.float32)).any()


def test_birefnet_applies_the_sigmoid_before_stretching() -> None:
    logits = np.array([-4.0, 0.0, 4.0], np.float32).reshape(1, 1, 1, 3)

    mask = BiRefNetFamily.read_mask(logits)

    low, middle, high = mask.ravel().tolist()
    assert (low, high) == (0, 255)
    assert middle in (127, 128)  # sigmoid(0) = 0.5, halfway between sigmoid(-4) and sigmoid(4)


def test_bundled_model_is_packaged_next_to_the_code() -> None:
    # The wheel ships photoroom_bg/engines/models/*; loading needs no network and no cache.
    spec = resolve_model("u2netp")
    assert spec.path == BUNDLED
    assert spec.sha256 == U2NETP_SHA256


def test_the_resize_rewrite_touches_only_the_coordinate_mode() -> None:
    original = BUNDLED.read_bytes()

    rewritten = use_half_pixel_resize(original)

    resizes = original.count(b"pytorch_half_pixel")
    assert resizes > 0
    assert rewritten.count(b"pytorch_half_pixel") == 0
    assert len(original) - len(rewritten) == resizes * len("pytorch_")
    assert use_half_pixel_resize(rewritten) == rewritten


def test_the_resize_rewrite_leaves_the_model_output_unchanged() -> None:
    tensor = np.random.default_rng(3).random((1, 3, 320, 320), dtype=np.float32)
    outputs = []
    for model in (BUNDLED.read_bytes(), use_half_pixel_resize(BUNDLED.read_bytes())):
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {session.get_inputs()[0].name: tensor})[0])

    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)


@pytest.mark.parametrize("data", [b"\x3a\xff", b"\x0e", b"\x08\xff\xff"])
def test_the_resize_rewrite_rejects_malformed_protobuf(data: bytes) -> None:
    with pytest.raises(ValueError, match="protobuf"):
        use_half_pixel_resize(data)
