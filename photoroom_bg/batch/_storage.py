"""Where a batch's outputs go: the sink, waited for through an outage, and the spill folder
for paid cut-outs the sink does not take."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal, TypeVar

import anyio
import anyio.abc
import attrs

from .._logs import get_logger
from .._retry import RetryPolicy
from ..errors import (
    BucketNotFoundError,
    ObjectNotFoundError,
    PhotoroomBGError,
    StorageAuthError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
    UnsafeKeyError,
)
from ..sinks import FileSystemSink, Sink, StoredObject
from ..sinks._filesystem import stored_keys
from ._failures import misleading, typed
from ._jobs import JobStatus

__all__ = ["STOPPING_STORAGE_ERRORS", "Storage", "Unstored"]

T = TypeVar("T")

logger = get_logger("photoroom_bg.batch")

# the sink cannot take any output: every later job would pay for a cut-out it cannot keep
STOPPING_STORAGE_ERRORS = (StorageFullError, StorageAuthError, BucketNotFoundError)
PROBE_KEY = ".photoroom-bg-probe"
_MIME = {"jpg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}


def _plain_files(sink: Sink, method: str) -> FileSystemSink | None:
    """``sink``, when it is a :class:`FileSystemSink` whose ``method`` is its own."""
    if isinstance(sink, FileSystemSink) and getattr(type(sink), method) is getattr(
        FileSystemSink, method
    ):
        return sink
    return None


def _content_type(key: str) -> str:
    return _MIME.get(key.rsplit(".", 1)[-1].lower(), "image/png")


def _answer(value: object, kind: type[T], method: str) -> T:
    """``value``, which the sink's ``method`` returned, if it is the ``kind`` the protocol
    asks for; else a :class:`StorageError`. A sink of the caller's whose ``exists`` returned
    ``None`` had every image skipped as "already stored", and none made."""
    if not isinstance(value, kind):
        raise StorageError(
            f"the sink's {method}() returned {type(value).__name__}, not a {kind.__name__}"
        )
    return value


@attrs.frozen
class Unstored:
    """A paid cut-out the sink did not take: kept in the spill folder (or, failing that,
    lost), and why."""

    status: JobStatus
    output: StoredObject | None
    error: StorageError
    reason: str | None = None

    def fields(self) -> dict[str, Any]:
        """The job result fields that say so."""
        return {"output": self.output, "error": self.error, "reason": self.reason}


class Storage:
    """The sink as one batch sees it.

    While the sink is unreachable (:class:`~photoroom_bg.errors.StorageUnavailableError`),
    every worker waits and one prober checks it with backoff for up to ``outage_budget``
    seconds; past that, the batch stops (``stop``) and paid cut-outs go to the spill folder.

    Args:
        sink: where outputs go.
        spill_dir: where paid cut-outs wait when the sink does not take them.
        policy: the backoff of put retries and probes.
        retry_budget: seconds a put is retried after an ordinary storage error.
        timeout: seconds one call to the sink may take before it counts as failed (a put's
            cut-out is then spilled at once: a sink that hangs once may hang again).
        outage_budget: seconds an outage is waited out.
        stop: stops the batch, with a reason.
    """

    def __init__(
        self,
        sink: Sink,
        spill_dir: Any,
        policy: RetryPolicy,
        *,
        retry_budget: float,
        outage_budget: float,
        timeout: float = float("inf"),
        stop: Callable[[str], None],
    ) -> None:
        self.sink = sink
        self.spill = FileSystemSink(spill_dir)
        self.policy = policy
        self.retry_budget = retry_budget
        self.outage_budget = outage_budget
        self.timeout = timeout
        self._stop = stop
        self._available = anyio.Event()
        self._available.set()
        self._outage_since: float | None = None
        self._puts_failing_since: float | None = None  # puts unreachable since, none through
        self._gone: StorageError | None = None
        self._storing: set[anyio.CancelScope] = set()  # the puts under way, off the fast path
        self.task_group: anyio.abc.TaskGroup | None = None  # where the prober runs
        # the spill folder's keys, listed once: most batches have nothing spilled, and a look
        # in the folder for every image would cost a worker-thread round trip each
        self._spilled: set[str] | None = None
        self._spilled_lock = anyio.Lock()
        # the sink, where it is a FileSystemSink whose put (or stat) is its own (a subclass
        # may do anything in an override): those can run in place, with no cancel scope
        self._puts_files = _plain_files(sink, "put")
        self._stats_files = _plain_files(sink, "stat")
        # a sink that does not make its objects durable (FileSystemSink(durable=False)) may
        # lose, or empty, what it stored in a power cut: what it holds is checked, not trusted
        self.durable = getattr(sink, "durable", True) is not False

    # -- reading -------------------------------------------------------------------------

    async def bounded(self, call: Awaitable[T], doing: str) -> T:
        """``await call``, a call to the sink; a :class:`StorageError` if it takes longer than
        :attr:`timeout` (a sink that hangs would otherwise hold its job, and the batch,
        forever)."""
        with anyio.move_on_after(self.timeout):
            return await call
        raise StorageError(f"the sink took more than {self.timeout:g} s {doing} (store_timeout)")

    async def describe(self, key: str) -> StoredObject | Literal[False] | None:
        """The stored object's description by a stat, never a download; ``False`` if the
        sink has no such object, ``None`` if it cannot tell cheaply."""
        stat = getattr(self.sink, "stat", None)
        if stat is None:
            return None
        try:
            found = await self.bounded(stat(key), "to describe an output")
        except ObjectNotFoundError:
            return False
        except PhotoroomBGError:
            return None
        return found if isinstance(found, StoredObject) else None  # a sink of the caller's

    def looks_up_in_place(self) -> bool:
        """Whether :meth:`lookup` runs in place now: on the event loop, with no turn of it,
        so that nothing in it can be cancelled or time out (its caller needs no cancel
        scope around it either)."""
        files = self._stats_files
        return files is not None and self._available.is_set() and files._looks_up_in_place()

    async def lookup(self, key: str) -> StoredObject | bool:
        """What is stored under ``key`` (``True`` when the sink cannot describe it), or
        ``False``; an outage is waited out. An empty object in a sink that is not durable is
        what a power cut leaves of a cut-out written just before it: ``False``."""
        found = await self._lookup(key)
        if not self.durable and isinstance(found, StoredObject) and found.size == 0:
            return False
        return found

    async def _lookup(self, key: str) -> StoredObject | bool:
        if self._stats_files is not None and self.looks_up_in_place():
            found = await self._stats_files._stat_or_none(key)  # no timer: it cannot hang
            return False if found is None else found
        stat = getattr(self.sink, "stat", None)
        while True:
            await self.available()
            try:
                if stat is not None:
                    try:
                        stated: object = await self.bounded(stat(key), "to look an output up")
                    except ObjectNotFoundError:
                        return False
                    return _answer(stated, StoredObject, "stat")
                return _answer(
                    await self.bounded(self.sink.exists(key), "to look an output up"),
                    bool,
                    "exists",
                )
            except StorageUnavailableError as exc:
                self.outage(exc)

    async def from_spill(self, key: str, *, listed: bool = True) -> tuple[bytes, str] | None:
        """A cut-out an earlier run paid for and spilled, with its content type (``listed``:
        among the keys the spill folder held when first asked; else looked for now)."""
        if listed and key not in await self._spilled_keys():
            return None
        try:
            data = await self.spill.get(key)
        except PhotoroomBGError:
            return None
        return data, _content_type(key)

    async def read_back(self, key: str, *, spilled: bool) -> tuple[bytes, str] | None:
        """A cut-out this batch stored under ``key`` (in the spill folder when ``spilled``),
        with its content type; ``None`` when it cannot be read now (the caller makes it)."""
        if spilled:
            return await self.from_spill(key, listed=False)
        try:
            got: object = await self.bounded(self.sink.get(key), "to read a cut-out back")
            if isinstance(got, (bytearray, memoryview)):
                got = bytes(got)
            data = _answer(got, bytes, "get")
        except Exception as exc:  # a sink of the caller's may raise anything: make it anew
            logger.debug("%s could not be read back (%s): made again", key, exc)
            return None
        return data, _content_type(key)

    async def unspill(self, key: str) -> None:
        """Forget a spilled cut-out once the sink holds it."""
        with contextlib.suppress(PhotoroomBGError):
            await self.spill.delete(key)
            if self._spilled is not None:
                self._spilled.discard(key)

    async def _spilled_keys(self) -> set[str]:
        if self._spilled is not None:  # listed already: no lock (each take yields the loop)
            return self._spilled
        async with self._spilled_lock:
            if self._spilled is None:
                self._spilled = await anyio.to_thread.run_sync(stored_keys, self.spill.root)
            return self._spilled

    # -- storing -------------------------------------------------------------------------

    async def store(
        self,
        key: str,
        content: bytes,
        content_type: str,
        metadata: dict[str, str],
        kept: list[Unstored] | None = None,
    ) -> StoredObject | Unstored:
        """Put a paid cut-out in the sink: retried for ``retry_budget`` seconds and through
        an outage of up to ``outage_budget``; if the sink still does not take it, kept in
        the spill folder. Never abandoned when the batch stops or is cancelled: when the
        sink's put raises ``KeyboardInterrupt`` or ``SystemExit``, the cut-out is spilled,
        how it ended is added to ``kept``, and the exception goes on."""
        try:
            return await self._store(key, content, content_type, metadata)
        except (Exception, anyio.get_cancelled_exc_class()):
            raise
        except BaseException as exc:  # sys.exit() in a sink's put: keep what was paid
            interrupted = StorageError(f"the sink's put raised {type(exc).__name__}")
            with anyio.CancelScope(shield=True):
                unstored = await self._spill(key, content, content_type, interrupted)
            if kept is not None:
                kept.append(unstored)
            raise

    async def _store(
        self, key: str, content: bytes, content_type: str, metadata: dict[str, str]
    ) -> StoredObject | Unstored:
        deadline = time.monotonic() + self.retry_budget
        delays = self.policy.delays()
        failed: Exception | None = None
        files = self._puts_files
        if (
            files is not None
            and self._gone is None
            and self._available.is_set()
            and files._puts_in_place(len(content))
        ):
            # written and renamed in place, with no turn of the loop before the rename, and
            # the folder's fsync shielded by the put itself: nothing here can be cancelled
            # or time out, so no shield and no timer (a cancel scope and a timer handle
            # for every image, more CPU than the put's own Python)
            try:
                stored = await files.put(key, content, content_type=content_type, metadata=metadata)
            except Exception as exc:  # handled below, as any put's error is
                failed = exc
            else:
                self._puts_failing_since = None
                return stored
        # paid for: finish storing it, whatever happens, unless give_up() cuts it short
        with anyio.CancelScope(shield=True) as storing, self._cut_short_by(storing):
            while True:
                if failed is None:
                    await self.available()
                    if self._gone is not None:
                        return await self._spill(key, content, content_type, self._gone)
                try:
                    if failed is not None:  # the in-place put's error: retried, or spilled
                        error, failed = failed, None
                        raise error
                    with anyio.move_on_after(self.timeout):
                        stored = await self.sink.put(
                            key, content, content_type=content_type, metadata=metadata
                        )
                        if not isinstance(stored, StoredObject):  # a sink of the caller's
                            raise TypeError(
                                f"the sink's put returned {type(stored).__name__}, "
                                "not a StoredObject"
                            )
                        self._puts_failing_since = None
                        return stored
                    hung = StorageError(
                        f"the sink took more than {self.timeout:g} s to store it (store_timeout)"
                    )
                    return await self._spill(key, content, content_type, hung)
                except StorageUnavailableError as exc:
                    if self._refusing_puts(exc):  # it answers look-ups, but takes nothing
                        return await self._spill(key, content, content_type, exc)
                    self.outage(exc)
                except (UnsafeKeyError, *STOPPING_STORAGE_ERRORS) as exc:
                    self.stop_if_gone(exc)
                    return await self._spill(key, content, content_type, exc)
                except StorageError as exc:
                    delay = next(delays)
                    if time.monotonic() + delay > deadline:
                        return await self._spill(key, content, content_type, exc)
                    logger.debug("retrying the put of %s after %s", key, exc)
                    await anyio.sleep(delay)
                except Exception as exc:  # a sink of the caller's with a bug: keep what was paid
                    return await self._put_failed(key, content, content_type, exc)
                except BaseException as exc:
                    surprise = misleading(exc, "the sink's put")
                    if surprise is None:  # sys.exit() in the put: see store()
                        raise
                    return await self._put_failed(key, content, content_type, surprise)
        # cut short by give_up(): kept in the spill folder instead
        with anyio.CancelScope(shield=True):
            kept = await self._spill(key, content, content_type, self._given_up())
        return kept

    @contextlib.contextmanager
    def _cut_short_by(self, scope: anyio.CancelScope) -> Iterator[None]:
        self._storing.add(scope)
        try:
            yield
        finally:
            self._storing.discard(scope)

    def _given_up(self) -> StorageError:
        return self._gone or StorageError("the batch stopped waiting for the sink")

    def give_up(self, reason: str) -> None:
        """Wait for the sink no more (the interpreter is exiting, past the batch's
        ``exit_timeout``): the puts under way are cut short, and they and every later one
        keep their cut-outs in the spill folder, for a later run to store unpaid."""
        if self._gone is None:
            self._gone = StorageError(reason)
        self._available.set()
        for scope in list(self._storing):
            scope.cancel()

    async def _put_failed(
        self, key: str, content: bytes, content_type: str, exc: Exception
    ) -> Unstored:
        """The sink's put raised what no sink should: keep the paid cut-out."""
        logger.error("the sink failed to store %s", key, exc_info=exc)
        error = typed(exc, StorageError, "storing the cut-out")
        assert isinstance(error, StorageError)
        return await self._spill(key, content, content_type, error)

    async def _spill(
        self, key: str, content: bytes, content_type: str, error: StorageError
    ) -> Unstored:
        try:
            with anyio.fail_after(self.timeout):
                kept = await self.spill.put(key, content, content_type=content_type)
            if self._spilled is not None:
                self._spilled.add(key)
        except (PhotoroomBGError, TimeoutError) as spill_error:
            logger.error(
                "could not keep the cut-out for %s in %s either: %s",
                key,
                self.spill.root,
                spill_error,
            )
            error.__cause__ = spill_error
            # every later cut-out the sink does not take would be paid for and lost too
            self._stop(
                f"the sink did not take a paid cut-out ({type(error).__name__}: {error}), and "
                f"the spill folder could not keep it either ({spill_error}): the batch stops, "
                "so that no more paid cut-outs are lost; run it again once the sink, or the "
                "spill folder (spill_dir), can take them"
            )
            return Unstored(JobStatus.FAILED, None, error, "paid for, but neither stored nor kept")
        logger.warning("the sink did not take %s (%s); kept at %s", key, error, kept.uri)
        return Unstored(
            JobStatus.SPILLED,
            kept,
            error,
            f"the sink did not take it ({type(error).__name__}); kept in the spill folder "
            "until a later run (resume(), retry_failed() or the same batch again) stores it "
            "without calling the engine",
        )

    def stop_if_gone(self, exc: StorageError) -> None:
        """Stop the batch when the sink can take no output at all (full, refusing us)."""
        if isinstance(exc, STOPPING_STORAGE_ERRORS):
            self._stop(f"{type(exc).__name__}: {exc}")

    # -- outages -------------------------------------------------------------------------

    async def available(self) -> None:
        """Return once the sink is not known to be unreachable: at once, without a turn of
        the event loop, while it is not (anyio's ``Event.wait`` gives one even when the
        event is set, and a batch asks twice per image)."""
        if not self._available.is_set():
            await self._available.wait()

    def _refusing_puts(self, exc: StorageUnavailableError) -> bool:
        """Whether puts have failed as unreachable for longer than ``outage_budget`` with
        none going through, while the prober found the sink answering each time (a server
        that serves reads but not writes): then the batch stops, as for an outage past its
        budget, where it used to pause and retry without end."""
        now = time.monotonic()
        if self._puts_failing_since is None:
            self._puts_failing_since = now
            return False
        if self._outage_since is not None or self._gone is not None:
            return False  # an outage being probed: the prober decides, as for any outage
        if now - self._puts_failing_since <= self.outage_budget:
            return False
        if self._gone is None:
            self._gone = exc
            self._stop(
                f"the sink has taken no cut-out for {self.outage_budget:g} s, though it "
                f"answers look-ups: {exc}"
            )
            self._available.set()
        return True

    def outage(self, exc: StorageUnavailableError) -> None:
        """The sink stopped answering: every worker waits while one prober checks it."""
        if self._outage_since is not None or self._gone is not None:
            return
        self._outage_since = time.monotonic()
        self._available = anyio.Event()
        logger.warning("the sink is unreachable (%s); pausing until it answers", exc)
        assert self.task_group is not None
        self.task_group.start_soon(self._probe, exc)

    async def _probe(self, first: StorageUnavailableError) -> None:
        delays = self.policy.delays()
        last: StorageError = first
        since = self._outage_since
        assert since is not None
        try:
            while time.monotonic() - since < self.outage_budget:
                await anyio.sleep(min(next(delays), 5.0))
                try:
                    await self.sink.exists(PROBE_KEY)
                except StorageUnavailableError as exc:
                    last = exc
                    continue
                except StorageError as exc:  # it answers, but refuses us now
                    self._gone = exc
                    self._stop(f"the sink answers again but refuses: {type(exc).__name__}: {exc}")
                    return
                waited = time.monotonic() - since
                logger.warning("the sink answers again after %.1f s; going on", waited)
                return
            self._gone = last
            self._stop(f"the sink has been unreachable for {self.outage_budget:g} s: {last}")
        finally:
            self._outage_since = None
            self._available.set()
