"""The emulator's listening socket: connections must not wait on Nagle's algorithm."""

from __future__ import annotations

import asyncio
import socket

from photoroom_bg.testing._server import listen_socket


async def test_accepted_connections_have_nagle_turned_off() -> None:
    seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Record(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    sock = listen_socket("127.0.0.1", 0)
    server = await asyncio.get_running_loop().create_server(Record, sock=sock)
    port = sock.getsockname()[1]
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        # a delayed ACK would otherwise hold each response body back by ~40 ms
        assert await asyncio.wait_for(seen, 10) != 0
        writer.close()
