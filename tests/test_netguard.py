"""The session's loopback guard refuses, before any packet, every way out of this machine."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from . import netguard

# TEST-NET-1 (RFC 5737): never routed; the guard must refuse before a packet is sent anyway
OUTSIDE = "192.0.2.1"


def _take_attempts() -> list[str]:
    seen = netguard.attempts()
    netguard.clear()  # these were made on purpose: keep the autouse check from failing us
    return seen


def test_socket_connects_beyond_loopback_are_refused_and_recorded() -> None:
    with socket.socket() as sock, pytest.raises(netguard.NonLoopbackConnectError):
        sock.connect((OUTSIDE, 80))
    with socket.socket() as sock, pytest.raises(netguard.NonLoopbackConnectError):
        sock.connect_ex((OUTSIDE, 80))
    with pytest.raises(netguard.NonLoopbackConnectError):
        socket.getaddrinfo("example.com", 443)
    seen = _take_attempts()
    assert len(seen) == 3
    assert "example.com" in seen[2]


def test_loopback_and_address_literals_pass() -> None:
    assert socket.getaddrinfo("127.0.0.1", 80)
    assert socket.getaddrinfo(OUTSIDE, 80)  # a literal asks no name server
    assert netguard.is_loopback_host("::1")
    assert netguard.is_loopback_host("::ffff:127.0.0.1")
    assert netguard.is_loopback_host("localhost")
    assert not netguard.is_loopback_host("10.0.0.1")
    assert not netguard.is_loopback_host("::ffff:10.0.0.1")
    assert _take_attempts() == []


async def test_asyncio_and_httpx_connections_are_refused() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(netguard.NonLoopbackConnectError):
        await loop.create_connection(asyncio.Protocol, OUTSIDE, 80)
    with socket.socket() as sock:
        sock.setblocking(False)
        with pytest.raises(netguard.NonLoopbackConnectError):
            await loop.sock_connect(sock, (OUTSIDE, 80))
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://{OUTSIDE}/")
    assert len(_take_attempts()) == 3


def test_python_children_are_guarded_and_reported(tmp_path: Path) -> None:
    log = Path(os.environ[netguard.LOG_ENV])
    before = log.stat().st_size if log.exists() else 0
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(({OUTSIDE!r}, 80), timeout=1)\n"
        "except ConnectionRefusedError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "NonLoopbackConnectError"
    with log.open("rb") as f:
        f.seek(before)
        added = f.read().decode()
    assert OUTSIDE in added
    # the child's line is expected here: truncate it away so the autouse check passes
    with log.open("r+b") as f:
        f.truncate(before)
