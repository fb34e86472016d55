"""A hostile HTTP server on 127.0.0.1: what a malicious or broken image host would send.

It speaks just enough HTTP/1.1 over raw sockets to misbehave on purpose. Routes:

- ``/img.png``: a small PNG; ``/img.png.gz``: the same, gzip-encoded.
- ``/to?u=URL``: a 302 redirect to ``URL`` (any address form, served verbatim).
- ``/drip?id=NAME&every=SECONDS``: a PNG header, then one byte every ``SECONDS``, forever;
  :meth:`HostileServer.drip` tells when drip ``NAME`` started and when its client left.
- ``/endless``: a chunked PNG-looking body that never ends.
- ``/short``: ``Content-Length: 5000`` but 70-odd bytes, then the connection closes.
- ``/long``: ``Content-Length: 100`` but a megabyte of body.
- ``/gzip-bomb``, ``/deflate-bomb``: 64 MB of image-looking zeros in about 64 KB.
- ``/brotli``: ``Content-Encoding: br`` (not decoded by the reader).

Nothing here ever connects anywhere: it only answers on loopback.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import socketserver
import threading
import zlib
from urllib.parse import parse_qs, urlsplit

from ..loopback import QuietHangUps, read_request_head
from .conftest import png_bytes

BOMB_SIZE = 64 * 1024 * 1024
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bomb_payload() -> bytes:
    return _PNG_MAGIC + b"\x00" * (BOMB_SIZE - len(_PNG_MAGIC))


class HostileServer:
    """The server, its address, and what it saw (requests, drips, disconnects)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self._drips: dict[str, tuple[threading.Event, threading.Event]] = {}
        self._bombs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                head = read_request_head(sock)
                if head is None:
                    return
                target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
                server.requests.append(target)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    server.route(sock, target)

        class Server(QuietHangUps, socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def drip(self, name: str) -> tuple[threading.Event, threading.Event]:
        """``(started, client_left)`` for the drip named ``name``."""
        with self._lock:
            return self._drips.setdefault(name, (threading.Event(), threading.Event()))

    def bomb(self, encoding: str) -> bytes:
        """:data:`BOMB_SIZE` bytes of image-looking zeros, gzip- or deflate-encoded."""
        with self._lock:
            if encoding not in self._bombs:
                payload = _bomb_payload()
                if encoding == "gzip":
                    self._bombs[encoding] = gzip.compress(payload, compresslevel=9)
                else:
                    deflater = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS)
                    self._bombs[encoding] = deflater.compress(payload) + deflater.flush()
            return self._bombs[encoding]

    @staticmethod
    def _head(status: str, headers: dict[str, str]) -> bytes:
        headers = {**headers, "Connection": "close"}  # one request per connection
        lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        return "\r\n".join(lines).encode()

    def route(self, sock: socket.socket, target: str) -> None:
        route = urlsplit(target)
        query = parse_qs(route.query)
        path = route.path
        if path == "/img.png":
            body = png_bytes()
            sock.sendall(self._head("200 OK", {"Content-Length": str(len(body))}) + body)
        elif path == "/img.png.gz":
            body = gzip.compress(png_bytes())
            headers = {"Content-Length": str(len(body)), "Content-Encoding": "gzip"}
            sock.sendall(self._head("200 OK", headers) + body)
        elif path == "/to":
            headers = {"Location": query["u"][0], "Content-Length": "0"}
            sock.sendall(self._head("302 Found", headers))
        elif path == "/drip":
            started, left = self.drip(query.get("id", [""])[0])
            every = float(query.get("every", ["0.05"])[0])
            sock.sendall(self._head("200 OK", {"Content-Length": "10000000"}) + _PNG_MAGIC * 2)
            try:
                while not self._stop.is_set():
                    sock.sendall(b"\x00")
                    started.set()
                    self._stop.wait(every)
            except OSError:
                left.set()
        elif path == "/endless":
            sock.sendall(self._head("200 OK", {"Transfer-Encoding": "chunked"}))
            block = _PNG_MAGIC + b"\x00" * 65528
            while not self._stop.is_set():
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
        elif path == "/short":
            body = png_bytes()
            sock.sendall(self._head("200 OK", {"Content-Length": "5000"}) + body)
        elif path == "/long":
            body = png_bytes() + b"\x00" * 1_000_000
            sock.sendall(self._head("200 OK", {"Content-Length": "100"}) + body)
        elif path in ("/gzip-bomb", "/deflate-bomb"):
            encoding = "gzip" if path == "/gzip-bomb" else "deflate"
            body = self.bomb(encoding)
            headers = {"Content-Length": str(len(body)), "Content-Encoding": encoding}
            sock.sendall(self._head("200 OK", headers) + body)
        elif path == "/brotli":
            body = b"\x1b\x00\x00"
            headers = {"Content-Length": str(len(body)), "Content-Encoding": "br"}
            sock.sendall(self._head("200 OK", headers) + body)
        else:
            sock.sendall(self._head("404 Not Found", {"Content-Length": "0"}))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
