"""Real HTTP servers on 127.0.0.1 for the fetch tests: a well-behaved one and a hostile one."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from ..loopback import QuietHangUps


def png_bytes(size: int = 16) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (1, 2, 3)).save(out, format="PNG")
    return out.getvalue()


class ImageServer:
    """Routes: /img.png, /redirect?to=URL, /loop, /big, /chunked, /text, /missing, /boom."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("host", "")))
                route = urlsplit(self.path)
                query = parse_qs(route.query)
                if route.path == "/img.png":
                    self._send(200, png_bytes(), "image/png")
                elif route.path == "/redirect":
                    self._redirect(query["to"][0])
                elif route.path == "/loop":
                    self._redirect("/loop")
                elif route.path == "/big":
                    self.send_response(200)
                    self.send_header("content-type", "image/png")
                    self.send_header("content-length", str(10_000_000))
                    self.end_headers()
                    self.wfile.write(png_bytes()[:16])
                    self.close_connection = True
                elif route.path == "/chunked":
                    self.send_response(200)
                    self.send_header("content-type", "image/png")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    block = png_bytes() + b"\x00" * 4000
                    try:
                        for _ in range(50):
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                        self.wfile.write(b"0\r\n\r\n")
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                elif route.path == "/text":
                    self._send(200, b"<html><body>not an image</body></html>" * 10, "image/png")
                elif route.path == "/boom":
                    self._send(500, b"oops", "text/plain")
                else:
                    self._send(404, b"not found", "text/plain")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("location", location)
                self.send_header("content-length", "0")
                self.end_headers()

        class Server(QuietHangUps, ThreadingHTTPServer):
            pass

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def image_server() -> Iterator[ImageServer]:
    server = ImageServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hostile() -> Iterator[Any]:
    """A :class:`~tests.sources.hostile.HostileServer` for one test module."""
    from .hostile import HostileServer

    server = HostileServer()
    server.start()
    yield server
    server.stop()
