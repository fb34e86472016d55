"""The Photoroom API as an :class:`~photoroom_bg.Engine`."""

from __future__ import annotations

import copy
from types import TracebackType
from typing import Any

from photoroom_bg._client import AsyncPhotoroomClient
from photoroom_bg.errors import ValidationError
from photoroom_bg.models import ImageResult
from photoroom_bg.options import EditOptions, SegmentOptions

__all__ = ["PhotoroomEngine"]


class PhotoroomEngine:
    """Send each image to Photoroom: :class:`~photoroom_bg.SegmentOptions` go to
    ``/v1/segment``, :class:`~photoroom_bg.EditOptions` to ``/v2/edit``.

    Args:
        client: an :class:`~photoroom_bg.AsyncPhotoroomClient` to use (not closed by
            :meth:`aclose`). Without one, a client is built from ``client_kwargs``
            (``api_key``, ``base_url``, ``max_retries``...) and owned by the engine.
        **client_kwargs: arguments for the client built when ``client`` is not given.

    Attributes:
        name: ``"photoroom"``.
        bills: ``True``: each successful call spends images from the account.
        client: the underlying async client.
    """

    name = "photoroom"
    bills = True

    def __init__(self, client: AsyncPhotoroomClient | None = None, **client_kwargs: Any) -> None:
        if client is not None and client_kwargs:
            raise ValidationError("pass either client= or client arguments, not both")
        self._owns_client = client is None
        self.client = client if client is not None else AsyncPhotoroomClient(**client_kwargs)

    def __repr__(self) -> str:
        return f"PhotoroomEngine({self.client!r})"

    def check_options(self, options: object) -> None:
        """Refuse anything but :class:`~photoroom_bg.SegmentOptions` and
        :class:`~photoroom_bg.EditOptions` (both are validated when built).

        Raises:
            ValidationError: ``options`` is of another type.
        """
        if not isinstance(options, (SegmentOptions, EditOptions)):
            raise ValidationError(
                f"PhotoroomEngine takes SegmentOptions or EditOptions, not {type(options).__name__}"
            )

    async def process(self, image: bytes, options: SegmentOptions | EditOptions) -> ImageResult:
        """Remove the background (or edit) ``image`` with the API."""
        self.check_options(options)
        if isinstance(options, EditOptions):
            return await self.client.edit(image, options)
        return await self.client.remove_background(image, options)

    async def process_url(self, url: str, options: EditOptions) -> ImageResult:
        """Let Photoroom fetch ``url`` itself (``GET /v2/edit?imageUrl=...``)."""
        if not isinstance(options, EditOptions):
            raise ValidationError("only EditOptions can pass an image URL straight to Photoroom")
        return await self.client.edit(url, options)

    def _with_client(self, client: AsyncPhotoroomClient) -> PhotoroomEngine:
        """A copy of this engine (subclass and overrides kept) that owns ``client``."""
        clone = copy.copy(self)
        clone.client = client
        clone._owns_client = False  # whoever made ``client`` closes it
        return clone

    async def aclose(self) -> None:
        """Close the client if the engine created it."""
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> PhotoroomEngine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
