"""Results returned by the clients: :class:`ImageResult`, :class:`Account` and :class:`Credits`."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

import attrs

__all__ = ["Account", "Credits", "ImageResult"]

_EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/avif": ".avif",
    "image/heic": ".heic",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
}


@attrs.frozen(repr=False)
class ImageResult:
    """An image returned by Photoroom (or another engine), with the response metadata.

    Attributes:
        content: the encoded image bytes.
        content_type: the MIME type, e.g. ``image/png``: read from the image's bytes, or, for
            bytes of no format known here, the answer's ``Content-Type``.
        uncertainty_score: ``x-uncertainty-score`` (0 confident .. 1 unsure, -1 humans found).
        ai_background_seed: ``pr-ai-background-seed``, the seed used for an AI background.
        texts_detected: ``pr-texts-detected``, texts found by text removal.
        edit_further_url: ``pr-edit-further-url``, a link to open the result in Photoroom.
        unsupported_attributes: parameters Photoroom ignored (``pr-unsupported-attributes``).
        watermarked: True when produced with a ``sandbox_`` key; never ship such output.
    """

    content: bytes
    content_type: str = "image/png"
    uncertainty_score: float | None = None
    ai_background_seed: int | None = None
    texts_detected: int | None = None
    edit_further_url: str | None = None
    unsupported_attributes: tuple[str, ...] = ()
    watermarked: bool = False

    @property
    def extension(self) -> str:
        """The file extension matching :attr:`content_type` (``.png``, ``.jpg``, ...)."""
        return _EXTENSIONS.get(self.content_type.split(";")[0].strip().lower(), ".bin")

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :attr:`content` to ``path`` (parents created) and return the path.

        The file is written beside ``path`` under a temporary name and renamed over it once
        whole, so a full disk or an interruption never leaves half an image there, nor
        destroys the file it replaces (``path`` keeps what it held, and the
        :class:`OSError` says why).
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        real = Path(os.path.realpath(target)) if target.is_symlink() else target
        temporary = real.with_name(f".{real.name}.{secrets.token_hex(4)}.part")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(self.content)
                with contextlib.suppress(OSError):  # a file replaced keeps its permissions
                    os.chmod(temporary, stat.S_IMODE(os.stat(real).st_mode))
            os.replace(temporary, real)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return target

    def __repr__(self) -> str:
        return (
            f"ImageResult(content_type={self.content_type!r}, size={len(self.content)}, "
            f"watermarked={self.watermarked})"
        )


@attrs.frozen
class Account:
    """Usage of the API key, from ``GET /v2/account``.

    Attributes:
        images_available: images (credits) left this period; may be fractional.
        images_subscription: images included in the subscription per period.
        plan: the plan name, e.g. ``"basic"`` or ``"plus"``.
    """

    images_available: float
    images_subscription: float
    plan: str | None = None


@attrs.frozen
class Credits:
    """The key's credits in the older credit view, from ``GET /v1/account``.

    Attributes:
        available: credits left this period; may be fractional.
        subscription: credits included in the subscription per period.
    """

    available: float
    subscription: float
