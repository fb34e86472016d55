"""Typed, validated options for ``/v1/segment`` (:class:`SegmentOptions`) and ``/v2/edit``."""

from __future__ import annotations

from typing import Literal

import attrs

__all__ = ["SegmentOptions"]

SegmentFormat = Literal["png", "jpg", "webp"]
SegmentChannels = Literal["rgba", "alpha"]
SegmentSize = Literal["preview", "medium", "hd", "full"]


@attrs.frozen(kw_only=True)
class SegmentOptions:
    """Options of ``POST https://sdk.photoroom.com/v1/segment`` (Remove Background).

    Attributes:
        format: output encoding, ``png`` (default), ``jpg`` or ``webp``.
        channels: ``rgba`` (cut-out) or ``alpha`` (the mask only, white = subject).
        bg_color: a background colour instead of transparency: hex (``#FF00FF``, the ``#`` is
            added if missing) or an HTML colour name.
        size: ``preview`` (0.25 MP), ``medium`` (1.5 MP), ``hd`` (4 MP) or ``full`` (default).
        crop: crop the output to the subject's bounding box.
        despill: remove green-screen colour spill.
    """

    format: SegmentFormat = attrs.field(
        default="png", validator=attrs.validators.in_(("png", "jpg", "webp"))
    )
    channels: SegmentChannels = attrs.field(
        default="rgba", validator=attrs.validators.in_(("rgba", "alpha"))
    )
    bg_color: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(str))
    )
    size: SegmentSize = attrs.field(
        default="full", validator=attrs.validators.in_(("preview", "medium", "hd", "full"))
    )
    crop: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    despill: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
