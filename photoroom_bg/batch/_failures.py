"""How a batch handles errors: one error out of a task group, typed errors for surprises, and
errors that keep nothing heavy alive."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
from collections.abc import AsyncIterator

import anyio
import httpx

from ..errors import APIConnectionError, APIStatusError, PhotoroomBGError

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport there
    from exceptiongroup import BaseExceptionGroup

__all__ = ["lighten", "misleading", "one_error", "typed"]


@contextlib.asynccontextmanager
async def one_error() -> AsyncIterator[None]:
    """Raise the error that ended a task group itself, not the group around it: the siblings
    it cancelled add nothing but noise."""
    try:
        yield
    except BaseExceptionGroup as group:
        raise _first_error(group) from None


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    cancelled = anyio.get_cancelled_exc_class()
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        current = pending.pop(0)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        else:
            leaves.append(current)
    for leaf in leaves:
        if not isinstance(leaf, cancelled):
            return leaf
    return leaves[0] if leaves else group


def misleading(exc: BaseException, where: str) -> RuntimeError | None:
    """A :class:`RuntimeError` standing for ``exc``, which code of the caller's (``where``)
    raised, when ``exc`` is no ``Exception`` and yet no request to stop either: a
    ``GeneratorExit``, or a cancellation that nothing asked for (leaked from a task that code
    cancelled, say); else ``None``. Taken for a cancel of the batch, such a cancellation ended
    the batch's tasks with paid calls under way and their jobs unrecorded; as an error it is
    handled where it was raised as an ``Exception`` there would be."""
    if not isinstance(exc, GeneratorExit) and not _stray_cancel(exc):
        return None
    why = "" if isinstance(exc, GeneratorExit) else ", though nothing cancelled the batch"
    error = RuntimeError(f"{where} raised {type(exc).__name__}{why}")
    error.__cause__ = exc
    return error


def _stray_cancel(exc: BaseException) -> bool:
    """Whether ``exc`` is a cancellation while nothing cancels the current task: no cancel
    scope around it is cancelled, nor (Python 3.11 on) is the task itself."""
    if not isinstance(exc, anyio.get_cancelled_exc_class()):
        return False
    if anyio.current_effective_deadline() == -math.inf:
        return False
    try:
        task = asyncio.current_task()
    except RuntimeError:  # trio: its cancel scopes, checked above, are all there is
        return True
    cancelling = getattr(task, "cancelling", None)
    return not (cancelling is not None and cancelling())


def typed(exc: BaseException, kind: type[PhotoroomBGError], doing: str = "") -> PhotoroomBGError:
    """``exc`` if it is one of ours, else ``kind`` with ``exc`` as its cause."""
    if isinstance(exc, PhotoroomBGError):
        return exc
    where = f" while {doing}" if doing else " in this job"
    error = kind(f"unexpected {type(exc).__name__}{where}: {exc}")
    error.__cause__ = exc
    return error


def lighten(error: BaseException) -> None:
    """Drop what an error would otherwise keep alive: the request (and the image in its
    body) behind an API error, and the frames (and their local variables) of tracebacks."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        if isinstance(current, APIStatusError) and current.response is not None:
            answer = current.response
            current.response = httpx.Response(
                answer.status_code, headers=answer.headers, content=answer.content
            )
        if isinstance(current, APIConnectionError):
            current.request = None
        current = current.__cause__ or current.__context__
