"""The :class:`Engine` protocol: image bytes and options in, an :class:`ImageResult` out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..models import ImageResult
    from ..options import EditOptions, SegmentOptions

__all__ = ["Engine"]


@runtime_checkable
class Engine(Protocol):
    """Something that turns an input image into a cut-out.

    :class:`~photoroom_bg.BatchRemover` drives any engine: the Photoroom API
    (:class:`~photoroom_bg.engines.PhotoroomEngine`), the offline model
    (:class:`~photoroom_bg.engines.LocalEngine`), or your own.

    Attributes:
        name: a short identifier recorded in manifests (``"photoroom"``, ``"local:u2netp"``).
        bills: True when each successful call costs the account a credit.
    """

    name: str
    bills: bool

    async def process(self, image: bytes, options: SegmentOptions | EditOptions) -> ImageResult:
        """Process one image; raise a :mod:`photoroom_bg.errors` exception on failure."""
        ...

    async def aclose(self) -> None:
        """Release resources (HTTP pools, model sessions)."""
        ...
