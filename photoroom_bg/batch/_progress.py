"""The batch's progress bar: a display, which nothing that happens to it may stop the batch for.

A bar whose stream fails (``photoroom-bg ... 2>&1 | tee log`` with ``tee`` gone, a closed
terminal, a full disk under a redirected ``stderr``) or whose widget fails would otherwise
raise out of the job that finished, and end the batch with calls under way, paid for and
then dropped. Here the bar stops drawing, one warning says so, and the batch goes on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TextIO

from .._logs import get_logger

logger = get_logger("photoroom_bg.batch")


class _Stream:
    """The bar's stream: what it cannot write is dropped, and the bar is told once."""

    def __init__(self, stream: TextIO, failed: Callable[[BaseException], None]) -> None:
        self._stream = stream
        self._failed = failed
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self._stream.write(text)
            except (OSError, ValueError) as exc:  # ValueError: a stream closed in-process
                self._broke(exc)
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except (OSError, ValueError) as exc:
                self._broke(exc)

    def _broke(self, exc: BaseException) -> None:
        self.broken = True
        self._failed(exc)

    def __getattr__(self, name: str) -> Any:  # fileno() for the terminal's width, encoding
        return getattr(self._stream, name)


class ProgressBar:
    """A ``tqdm`` bar for one batch; the first error it meets turns it off, with a warning."""

    def __init__(self, tqdm: Callable[..., Any]) -> None:
        self._bar: Any = None
        self._off = False
        stream = sys.stdout if _draws_in_a_notebook(tqdm) else sys.stderr
        try:
            self._bar = tqdm(
                desc="cut-outs",
                unit="img",
                dynamic_ncols=True,
                file=_Stream(stream, self._fail),
            )
        except Exception as exc:  # a widget that cannot be made
            self._fail(exc)

    def job_done(self, counted: bool, **postfix: int) -> None:
        """One job ended (``counted``: it is part of the bar's total, not cancelled)."""

        def show(bar: Any) -> None:
            if counted:
                bar.update(1)
            bar.set_postfix(**postfix, refresh=False)

        self._do(show)

    def stopped(self) -> None:
        self._do(lambda bar: bar.set_description("stopped", refresh=False))

    def set_total(self, total: int) -> None:
        def show(bar: Any) -> None:
            bar.total = total
            bar.refresh()

        self._do(show)

    def close(self) -> None:
        self._do(lambda bar: bar.close())

    def _do(self, action: Callable[[Any], object]) -> None:
        if self._off or self._bar is None:
            return
        try:
            action(self._bar)
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._off:
            return
        self._off = True
        if self._bar is not None:
            self._bar.disable = True  # its close() and __del__ then draw nothing more
        logger.warning(
            "the progress bar cannot be drawn (%s: %s); the batch goes on without it",
            type(exc).__name__,
            exc,
        )


def _draws_in_a_notebook(tqdm: Callable[..., Any]) -> bool:
    """Whether ``tqdm`` is ``tqdm.auto``'s notebook bar, which writes to ``stdout``."""
    notebook = sys.modules.get("tqdm.notebook")  # imported by tqdm.auto in a notebook only
    bar = getattr(notebook, "tqdm_notebook", None)
    return isinstance(tqdm, type) and isinstance(bar, type) and issubclass(tqdm, bar)
