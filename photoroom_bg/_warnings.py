""":class:`PhotoroomWarning`, and a ``warn`` that points at the caller's own line.

A fixed ``stacklevel`` cannot be right: the same warning is raised from an options
constructor (through attrs' generated ``__init__``), a sync method, an async method awaited
by the caller's coroutine, or a helper of the caller's. :func:`warn` walks the stack up to the
first frame outside this package instead, so the warning names the line a user wrote.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["PhotoroomWarning", "warn"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class PhotoroomWarning(UserWarning):
    """Photoroom accepted (or will accept) a call but something is worth knowing: parameters
    it ignored, a value only its documentation (not its spec) describes, an option that has no
    effect in this combination."""


def _internal(filename: str) -> bool:
    return filename.startswith(_PACKAGE) or filename.startswith("<attrs generated")


def warn(message: str, category: type[Warning] = PhotoroomWarning) -> None:
    """Emit ``message`` attributed to the first caller outside photoroom_bg."""
    frame = sys._getframe(1)
    level = 2
    while frame.f_back is not None and _internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
