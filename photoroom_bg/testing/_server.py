"""PhotoroomEmulator: the emulator's configuration, and running it on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .._numbers import shown
from ._app import EmulatorApp, LoggedRequest
from ._faults import FaultPicker, Faults
from ._imaging import BorderColorSegmenter, Segmenter
from ._ledger import Ledger

__all__ = ["DEFAULT_API_KEY", "PhotoroomEmulator"]

DEFAULT_API_KEY = "emulator-test-key"
#: Seconds the emulator's requests under way get to end when it stops: then they are cut.
SHUTDOWN_GRACE = 2


def listen_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket whose accepted connections get ``TCP_NODELAY`` from asyncio.

    asyncio only turns Nagle's algorithm off for sockets whose protocol is ``IPPROTO_TCP``;
    a socket made with protocol 0 would hold every response body back until the client's
    delayed ACK (about 40 ms per request on Linux).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:  # a port taken, an address not this machine's: no socket left open
        sock.close()
        raise
    return sock


def _credits(value: object) -> float:
    """A balance as a float: a number, or a ``ValueError`` naming ``credits``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(
            f"credits must be a number >= 0 (inf: never runs out), not {shown(value)}"
        ) from None


class PhotoroomEmulator:
    """An offline Photoroom: ``/v1/segment``, ``/v2/edit`` (GET and POST), ``/v1/account``
    and ``/v2/account`` with the real request contract, real image work, accounting and
    injected faults.

    Args:
        api_keys: known keys and their credits, e.g. ``{"key": 1000}``, or an iterable of
            keys (each gets ``credits``). ``sandbox_<key>`` works for every known key and
            returns watermarked, unbilled images.
        credits: credits of keys given without an amount.
        plan: ``"basic"`` (segment costs 1 image, edit 5) or ``"plus"`` (0.2 and 1).
        requests_per_minute: per-key rate limit, answered with 429 and ``Retry-After``.
        faults: latency and injected failures (:class:`Faults`).
        segmenter: the mask maker (default: :class:`BorderColorSegmenter`, no model needed).
        image_work: ``False`` skips decoding and returns a 1x1 PNG (for benchmarks); requests
            are still validated and billed.
        fetch_image_urls: let ``GET /v2/edit`` download ``imageUrl`` (loopback servers in
            tests); otherwise such requests get a 400.

    Attributes:
        ledger: credits and billed calls (:class:`~photoroom_bg.testing.Ledger`).
        requests: every request seen, as :class:`~photoroom_bg.testing.LoggedRequest`
            (never with the key).
    """

    def __init__(
        self,
        api_keys: Mapping[str, float] | Iterable[str] | str = (DEFAULT_API_KEY,),
        *,
        credits: float = 1000,
        plan: str = "basic",
        requests_per_minute: int | None = None,
        faults: Faults | None = None,
        segmenter: Segmenter | None = None,
        image_work: bool = True,
        fetch_image_urls: bool = True,
    ) -> None:
        if isinstance(api_keys, str):  # one key, not one key per character
            api_keys = [api_keys]
        keys = (
            {str(k): _credits(v) for k, v in api_keys.items()}
            if isinstance(api_keys, Mapping)
            else {str(k): _credits(credits) for k in api_keys}
        )
        if plan not in ("basic", "plus"):
            raise ValueError("plan must be 'basic' or 'plus'")
        for name, flag in (("image_work", image_work), ("fetch_image_urls", fetch_image_urls)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False, not {flag!r}")
        if faults is not None and not isinstance(faults, Faults):
            raise ValueError(f"faults must be a Faults or None, not {type(faults).__name__}")
        if any(not key.strip() for key in keys):
            # a request with an empty x-api-key header would then be let in
            raise ValueError("an API key must not be empty (an unset variable?)")
        for balance in keys.values():
            if not balance >= 0:  # NaN too; inf: never runs out
                raise ValueError(f"credits must be >= 0, not {balance!r}")
        if requests_per_minute is not None and (
            isinstance(requests_per_minute, bool)
            or not isinstance(requests_per_minute, int)
            or requests_per_minute < 1
        ):
            raise ValueError(
                f"requests_per_minute must be a whole number >= 1 or None, "
                f"not {requests_per_minute!r}"
            )
        self.ledger = Ledger(keys, plan=plan, requests_per_minute=requests_per_minute)
        self._faults = FaultPicker(faults or Faults())
        self.app = EmulatorApp(
            self.ledger,
            self._faults,
            segmenter=segmenter or BorderColorSegmenter(),
            image_work=image_work,
            fetch_image_urls=fetch_image_urls,
        )
        self.url: str | None = None

    def __repr__(self) -> str:
        return f"PhotoroomEmulator(keys={len(self.ledger.accounts)}, url={self.url!r})"

    @property
    def api_key(self) -> str:
        """The first known key (handy when there is one)."""
        return next(iter(self.ledger.accounts))

    @property
    def requests(self) -> list[LoggedRequest]:
        """Every request seen so far, oldest first."""
        return list(self.app.requests)

    def inject(self, *faults: str | None) -> None:
        """Give the next requests these faults, in order: ``inject("503", None, "reset")``."""
        self._faults.enqueue(faults)

    @contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Run on ``host:port`` (a free port by default) in a thread; yield the base URL.

        The base URL serves both Photoroom hosts' paths: pass it as ``base_url=`` to a client.
        """
        import uvicorn

        sock = listen_socket(host, port)
        bound_port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="critical",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
            limit_concurrency=None,
            backlog=4096,
            # a request stalled on purpose (the stall fault, or a long latency) held the
            # shutdown for the 30 s of the join below, and left the thread running
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="photoroom-emulator", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError("the Photoroom emulator did not start")
            time.sleep(0.01)
        shown = f"[{host}]" if ":" in host else host  # an IPv6 address: in brackets
        self.url = f"http://{shown}:{bound_port}"
        try:
            yield self.url
        finally:
            server.should_exit = True
            thread.join(timeout=30)
            sock.close()
            self.url = None

    def client(self, **kwargs: Any) -> Any:
        """A :class:`~photoroom_bg.PhotoroomClient` pointed at the running emulator."""
        from photoroom_bg import PhotoroomClient

        return PhotoroomClient(**self._client_kwargs(kwargs))

    def async_client(self, **kwargs: Any) -> Any:
        """An :class:`~photoroom_bg.AsyncPhotoroomClient` pointed at the running emulator."""
        from photoroom_bg import AsyncPhotoroomClient

        return AsyncPhotoroomClient(**self._client_kwargs(kwargs))

    def _client_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.url is None:
            raise RuntimeError("the emulator is not running: use it inside serve()")
        kwargs.setdefault("api_key", self.api_key)
        kwargs.setdefault("base_url", self.url)
        return kwargs
