"""The package's loggers: a log call never raises into the work that made it.

Python's logging does not guard a handler's ``emit``: the handlers of the standard library
catch their own errors (``Handler.handleError``), but an application's handler with a bug, or
one whose destination is gone, raises out of ``logger.debug(...)`` into the code that logged.
Here that code may hold an answer already paid for, or a cut-out not yet stored; a failing
handler must not throw it away. So every logger of the package is a :class:`SafeLogger`,
which reports such a failure on stderr as the logging module reports a handler's own (while
``logging.raiseExceptions`` is true, its default), once per place it fails, and goes on.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import traceback
from typing import Any

__all__ = ["SafeLogger", "get_logger"]

_reported: set[tuple[str, str, int]] = set()
_lock = threading.Lock()


class SafeLogger:
    """The log calls of :class:`logging.Logger` (``debug`` to ``exception``) on the logger
    ``name``, none of which raises an ``Exception``."""

    __slots__ = ("logger",)

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def isEnabledFor(self, level: int) -> bool:
        """Whether a record of ``level`` would be handled."""
        return self.logger.isEnabledFor(level)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log at DEBUG."""
        self._log(logging.DEBUG, msg, args, kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log at INFO."""
        self._log(logging.INFO, msg, args, kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log at WARNING."""
        self._log(logging.WARNING, msg, args, kwargs)

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log at ERROR."""
        self._log(logging.ERROR, msg, args, kwargs)

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log at ERROR with the exception being handled."""
        kwargs.setdefault("exc_info", True)
        self._log(logging.ERROR, msg, args, kwargs)

    def _log(self, level: int, msg: object, args: tuple[object, ...], kwargs: Any) -> None:
        if not self.logger.isEnabledFor(level):
            return
        try:  # the caller's frame, not this module's, in the record (%(funcName)s, ...)
            self.logger.log(level, msg, *args, stacklevel=3, **kwargs)
        except Exception as exc:
            _report(self.logger.name, exc)


def _report(name: str, exc: Exception) -> None:
    """Show a handler's failure on stderr, the first time it fails at that place."""
    if not logging.raiseExceptions:
        return
    where = traceback.extract_tb(exc.__traceback__)[-1:]
    key = (
        type(exc).__name__,
        where[0].filename if where else "",
        where[0].lineno or 0 if where else 0,
    )
    with _lock:
        if key in _reported:
            return
        _reported.add(key)
    with contextlib.suppress(Exception):  # stderr itself may be gone
        sys.stderr.write(
            "--- Logging error ---\n"
            f"A log handler failed on a record of {name}; the work that logged it goes on "
            "(this failure is shown once).\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        )


def get_logger(name: str) -> SafeLogger:
    """The :class:`SafeLogger` of ``name``."""
    return SafeLogger(name)
