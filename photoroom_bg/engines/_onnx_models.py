"""The models :class:`~photoroom_bg.engines.LocalEngine` runs, and where their files are found.

A registry in the manner of rembg: one small class per model family says how an image is
prepared for the network and how its first output becomes a mask; a table maps each model name
rembg users know to its family. Files come from this package (``u2netp``, verified by sha256),
from rembg's model folders (``$U2NET_HOME``, ``~/.u2net``, ``~/.rembg/models/<name>``) or from
an explicit path.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import ClassVar

import attrs
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from photoroom_bg._images import UnreadableFile, read_file
from photoroom_bg.errors import ConfigurationError

__all__ = [
    "BUNDLED_MODEL",
    "MODELS",
    "BiRefNetFamily",
    "IsNetFamily",
    "ModelFamily",
    "ModelSpec",
    "U2NetFamily",
    "available_models",
    "resolve_model",
]

BUNDLED_DIR = Path(__file__).with_name("models")
#: The largest model file read: past any segmentation model rembg ships (BiRefNet's, about
#: 1 GB), and within what one read of a file returns on Linux (2 GiB less a page).
MODEL_FILE_BYTES = 1536 << 20
BUNDLED_MODEL = "u2netp"
#: sha256 of the bundled ``u2netp.onnx`` (the rembg release asset, md5 8e83ca70…).
U2NETP_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"

Floats3 = tuple[float, float, float]


class ModelFamily:
    """How one family of models wants its input and gives its mask back.

    Subclasses set :attr:`input_size` (square side), :attr:`mean` and :attr:`std`. The input is
    the RGB image resized to the side with Lanczos, divided by its brightest value (as rembg
    does, so masks match), normalised per channel and laid out as NCHW float32.
    :attr:`half_pixel_resize` says the graph's ``pytorch_half_pixel`` upsampling may be run as
    the equivalent ``half_pixel`` (see :mod:`._onnx_graph`).
    """

    name: ClassVar[str]
    input_size: ClassVar[int]
    mean: ClassVar[Floats3]
    std: ClassVar[Floats3]
    half_pixel_resize: ClassVar[bool] = False

    @classmethod
    def prepare(cls, rgb: Image.Image) -> NDArray[np.float32]:
        """Turn an RGB image into the network's ``(1, 3, side, side)`` input tensor."""
        side = cls.input_size
        pixels = np.asarray(rgb.resize((side, side), Image.Resampling.LANCZOS), np.float32)
        peak = max(float(pixels.max()), 1e-6)
        std = np.asarray(cls.std, np.float32)
        scale = 1.0 / (peak * std)
        shift = np.asarray(cls.mean, np.float32) / std
        tensor = pixels * scale - shift
        return np.ascontiguousarray(tensor.transpose(2, 0, 1)[np.newaxis])

    @classmethod
    def activate(cls, prediction: NDArray[np.float32]) -> NDArray[np.float32]:
        """Map the raw first output to saliency scores (identity: the net ends in a sigmoid)."""
        return prediction

    @classmethod
    def read_mask(cls, output: NDArray[np.float32]) -> NDArray[np.uint8]:
        """Min-max normalise the first output's first channel into an 8-bit mask."""
        scores = cls.activate(np.asarray(output[0, 0], np.float32))
        low, high = float(scores.min()), float(scores.max())
        if high - low <= 1e-12:
            return np.zeros(scores.shape, np.uint8)
        scaled = (scores - low) * np.float32(255.0 / (high - low))
        mask: NDArray[np.uint8] = np.rint(scaled).astype(np.uint8)
        return mask


class U2NetFamily(ModelFamily):
    """U²-Net and its variants (``u2net``, ``u2netp``, ``u2net_human_seg``, ``silueta``)."""

    name = "u2net"
    input_size = 320
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)
    half_pixel_resize = True  # its smallest upsampled map is 20 x 20


class IsNetFamily(ModelFamily):
    """IS-Net / DIS (``isnet-general-use``, ``isnet-anime``): 1024 px, mean 0.5, std 1."""

    name = "isnet"
    input_size = 1024
    mean = (0.5, 0.5, 0.5)
    std = (1.0, 1.0, 1.0)


class BiRefNetFamily(ModelFamily):
    """BiRefNet (``birefnet-general`` …): 1024 px, ImageNet statistics, logits out."""

    name = "birefnet"
    input_size = 1024
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    @classmethod
    def activate(cls, prediction: NDArray[np.float32]) -> NDArray[np.float32]:
        """Apply the sigmoid the exported graph leaves out."""
        result: NDArray[np.float32] = (1.0 / (1.0 + np.exp(-prediction))).astype(np.float32)
        return result


@attrs.frozen
class ModelSpec:
    """A model file to load and the family that knows how to run it.

    Attributes:
        name: the registry name (``"u2netp"``) or the file's stem for an explicit path.
        family: the :class:`ModelFamily` subclass used for pre- and post-processing.
        path: the ``.onnx`` file.
        sha256: the expected digest, checked on load, or ``None`` when unknown.
    """

    name: str
    family: type[ModelFamily]
    path: Path
    sha256: str | None = None

    def read_verified(self) -> bytes:
        """Read the file and check its digest; raise :class:`ConfigurationError` on mismatch."""
        try:
            data = read_file(self.path, MODEL_FILE_BYTES)
        except UnreadableFile as exc:
            raise ConfigurationError(f"cannot read model file {self.path}: {exc}") from None
        if self.sha256 is not None and hashlib.sha256(data).hexdigest() != self.sha256:
            raise ConfigurationError(
                f"model file {self.path} does not match the expected sha256 {self.sha256}: "
                "it is corrupt or a different model; reinstall photoroom-bg[local], or load "
                "another file on purpose (model_path=, or --model-path on the command line)"
            )
        return data


#: Every model name LocalEngine knows, with its family (files named ``<name>.onnx``).
MODELS: dict[str, type[ModelFamily]] = {
    "u2netp": U2NetFamily,
    "u2net": U2NetFamily,
    "u2net_human_seg": U2NetFamily,
    "silueta": U2NetFamily,
    "isnet-general-use": IsNetFamily,
    "isnet-anime": IsNetFamily,
    "birefnet-general": BiRefNetFamily,
    "birefnet-general-lite": BiRefNetFamily,
    "birefnet-portrait": BiRefNetFamily,
    "birefnet-dis": BiRefNetFamily,
    "birefnet-hrsod": BiRefNetFamily,
    "birefnet-cod": BiRefNetFamily,
    "birefnet-massive": BiRefNetFamily,
}
FAMILIES: dict[str, type[ModelFamily]] = {
    family.name: family for family in (U2NetFamily, IsNetFamily, BiRefNetFamily)
}


def model_dirs() -> list[Path]:
    """The folders searched for ``<name>.onnx``, in rembg's order of precedence."""
    data_home = os.environ.get("XDG_DATA_HOME")
    u2net_home = os.environ.get("U2NET_HOME") or os.path.join(data_home or "~", ".u2net")
    rembg_home = os.environ.get("REMBG_HOME") or (
        os.path.join(data_home, "rembg") if data_home else os.path.join("~", ".rembg")
    )
    if os.environ.get("U2NET_HOME"):
        rembg_home = u2net_home
    return [Path(u2net_home).expanduser(), Path(rembg_home).expanduser() / "models"]


def _find_file(name: str) -> Path | None:
    for folder in model_dirs():
        for candidate in (folder / f"{name}.onnx", folder / name / f"{name}.onnx"):
            if candidate.is_file():
                return candidate
    return None


def available_models() -> list[str]:
    """Names that can be loaded right now: the bundled model plus files found on disk."""
    return [name for name in MODELS if name == BUNDLED_MODEL or _find_file(name) is not None]


def resolve_model(name: str, model_path: str | os.PathLike[str] | None = None) -> ModelSpec:
    """Find the file and family for ``name`` (or for an explicit ``model_path``).

    With ``model_path``, ``name`` may be a registered model or a family (``u2net``, ``isnet``,
    ``birefnet``) and only picks the pre- and post-processing.

    Raises:
        ConfigurationError: unknown name, or no file where one was expected; the message lists
            what is available.
    """
    family = MODELS.get(name) or (FAMILIES.get(name) if model_path is not None else None)
    if family is None:
        raise ConfigurationError(
            f"unknown local model {name!r}; known models: {', '.join(MODELS)}"
            + ("; families for model_path=: " + ", ".join(FAMILIES) if model_path else "")
        )
    if model_path is not None:
        path = Path(model_path).expanduser()
        if not path.is_file():
            raise ConfigurationError(f"model_path {str(path)!r} is not a file")
        expected = U2NETP_SHA256 if path.resolve() == _bundled_path().resolve() else None
        return ModelSpec(path.stem, family, path, expected)
    if name == BUNDLED_MODEL:
        return ModelSpec(name, family, _bundled_path(), U2NETP_SHA256)
    found = _find_file(name)
    if found is None:
        searched = ", ".join(str(folder) for folder in model_dirs())
        raise ConfigurationError(
            f"model file {name}.onnx not found (searched {searched}); available now: "
            f"{', '.join(available_models())}. Download it with rembg "
            f"(`rembg d {name}`), or load a file of your own (model_path=, or --model-path "
            "on the command line)"
        )
    return ModelSpec(name, family, found)


def _bundled_path() -> Path:
    return BUNDLED_DIR / f"{BUNDLED_MODEL}.onnx"
