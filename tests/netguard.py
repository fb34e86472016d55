"""A guard that fails any attempt of the test process to reach beyond loopback.

Installed for the whole test session by ``tests/conftest.py`` and, through
``tests/_guard_site/sitecustomize.py``, in every Python child process the tests start (the
command, emulator and benchmark children). It patches the places a connection or a name lookup
starts from: ``socket.socket.connect``/``connect_ex``, ``socket.getaddrinfo`` (a DNS query for a
real name leaves the machine too) and asyncio's ``create_connection``/``sock_connect``.

A refused attempt raises :class:`NonLoopbackConnectError` (an ``OSError``, so code under test
sees an ordinary connection failure) *and* is recorded; the session fixture fails the test that
made it even when the code under test swallowed the error. Child processes append their
attempts to the file named by ``PHOTOROOM_BG_NETGUARD_LOG``.

Non-Python children (SeaweedFS's ``weed``) are not covered by this: they are started with their
phone-home switched off instead (see ``tests/s3server.py``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["NonLoopbackConnectError", "attempts", "clear", "install", "is_loopback_host"]

LOG_ENV = "PHOTOROOM_BG_NETGUARD_LOG"
_LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost", "ip6-loopback"}

_lock = threading.Lock()
_attempts: list[str] = []
_installed = False
_report_to_log = False


class NonLoopbackConnectError(ConnectionRefusedError):
    """A test tried to reach an address other than loopback."""


def is_loopback_host(host: object) -> bool:
    """Whether ``host`` (a name, an address string or bytes) stays on this machine."""
    if host is None:
        return True  # getaddrinfo(None, port): the local wildcard, no lookup
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip("[]").split("%", 1)[0]
    if name.lower() in _LOOPBACK_NAMES or name.lower().endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _is_address_literal(host: object) -> bool:
    """An IP address written out: looking it up asks no name server."""
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        ipaddress.ip_address(str(host).strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def _refuse(what: str) -> NonLoopbackConnectError:
    with _lock:
        _attempts.append(what)
    path = os.environ.get(LOG_ENV)
    if path and _report_to_log:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"pid {os.getpid()}: {what}\n")
    return NonLoopbackConnectError(f"test network guard: refused {what} (loopback only)")


def _address_host(address: Any) -> object:
    if isinstance(address, tuple) and address:
        return address[0]
    return None  # AF_UNIX paths and the like stay local


def attempts() -> list[str]:
    """Every refused attempt recorded in this process since the last :func:`clear`."""
    with _lock:
        return list(_attempts)


def clear() -> None:
    """Forget the recorded attempts."""
    with _lock:
        _attempts.clear()


def install(*, child: bool = False) -> None:
    """Patch the connection and lookup entry points (idempotent).

    ``child=True`` in processes started by the tests: their attempts go to the shared log, which
    the test session reads, since their memory is out of its reach.
    """
    global _installed, _report_to_log
    _report_to_log = child
    if _installed:
        return
    _installed = True

    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback_host(
            _address_host(address)
        ):
            raise _refuse(f"connect to {address!r}")
        return original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback_host(
            _address_host(address)
        ):
            raise _refuse(f"connect_ex to {address!r}")
        return original_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not (is_loopback_host(host) or _is_address_literal(host)):
            raise _refuse(f"name lookup of {host!r}")
        return original_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo

    loop_class = asyncio.BaseEventLoop
    original_create_connection: Callable[..., Any] = loop_class.create_connection
    original_sock_connect: Callable[..., Any] = loop_class.sock_connect

    async def create_connection(
        self: asyncio.BaseEventLoop, protocol_factory: Any, host: Any = None, *args: Any, **kw: Any
    ) -> Any:
        if host is not None and not is_loopback_host(host):
            raise _refuse(f"asyncio connection to {host!r}")
        return await original_create_connection(self, protocol_factory, host, *args, **kw)

    async def sock_connect(self: asyncio.BaseEventLoop, sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback_host(
            _address_host(address)
        ):
            raise _refuse(f"asyncio connect to {address!r}")
        return await original_sock_connect(self, sock, address)

    loop_class.create_connection = create_connection  # type: ignore[method-assign]
    loop_class.sock_connect = sock_connect  # type: ignore[method-assign]
