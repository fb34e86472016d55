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

from ._logs import get_logger

__all__ = ["PhotoroomWarning", "warn", "warn_paid"]

logger = get_logger("photoroom_bg")

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


def warn_paid(message: str) -> None:
    """:func:`warn` about an answer already paid for, which never raises: the paid image must
    still reach the caller when warnings are errors (``-W error``, a test suite's
    ``filterwarnings = error``) or when showing one fails (its stream gone). What could not
    be issued as a warning is logged instead."""
    try:
        warn(message)
    except Exception as exc:
        why = (
            "warnings are errors here, but this call was paid for"
            if isinstance(exc, Warning)
            else f"the warning could not be shown ({type(exc).__name__}: {exc})"
        )
        logger.warning("%s (%s: its result is kept)", message, why)
