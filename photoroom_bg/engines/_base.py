"""The :class:`Engine` protocol: image bytes and options in, an :class:`ImageResult` out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..models import ImageResult
    from ..options import EditOptions, SegmentOptions

__all__ = ["Engine", "check_engine_options"]


@runtime_checkable
class Engine(Protocol):
    """Something that turns an input image into a cut-out.

    :class:`~photoroom_bg.BatchRemover` drives any engine: the Photoroom API
    (:class:`~photoroom_bg.engines.PhotoroomEngine`), the offline model
    (:class:`~photoroom_bg.engines.LocalEngine`), or your own.

    An engine may also define ``check_options(options) -> None``, raising
    :class:`~photoroom_bg.errors.ValidationError` for options it can never accept (whatever
    the image), so that a batch or the command refuses them before the first job instead of
    failing every job alike. It is optional: :func:`check_engine_options` calls it when it
    exists, and engines without it are asked nothing up front.

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


def check_engine_options(engine: object, options: SegmentOptions | EditOptions) -> None:
    """Refuse ``options`` that ``engine`` can never accept, before any image is processed.

    Calls the engine's optional ``check_options(options)``; an engine without one accepts
    every option up front (its :meth:`~Engine.process` may still refuse them per image).

    Raises:
        ValidationError: the engine cannot honour these options for any image (for example
            ``despill=True`` or :class:`~photoroom_bg.EditOptions` on the local engine).
    """
    check = getattr(engine, "check_options", None)
    if check is not None:
        check(options)
