"""Real processes for the service tests: uvicorn serving the app as a child process, a
loopback image server, and helpers to poll them with deadlines."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import attrs
import httpx
from PIL import Image, ImageDraw

from ..loopback import PortTaken, closed_port, start_on_free_ports

T = TypeVar("T")

API_KEY = "svc-emulator-key-0f3c9d1e2b7a"  # checked never to leave the service
ALICE, BOB = "alice-token-5b1e0c", "bob-token-93af27"


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    return closed_port()


def photo(n: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """Product photo number ``n``: a coloured box on white, different bytes for every n."""
    image = Image.new("RGB", (size[0] + n % 17, size[1] + n // 17 % 13), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle([12, 10, 40, 30], fill=(n * 37 % 200 + 30, n * 11 % 200 + 20, 60))
    draw.point((1 + n % 5, 1 + n // 5 % 5), fill=(250, 250, 249))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def poll(check: Callable[[], T | None], *, timeout: float = 60, what: str = "a condition") -> T:
    """Call ``check`` until it returns something other than ``None``/``False``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class _Images(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.hits[path] = self.server.hits.get(path, 0) + 1  # type: ignore[attr-defined]
        if path.startswith("/img/") and path.endswith(".png"):
            body, kind = photo(int(path[5:-4])), "image/png"
        elif path == "/text.txt":
            body, kind = b"this is not an image, just some words", "text/plain"
        elif path == "/big.png":
            body, kind = b"\x89PNG\r\n\x1a\n" + b"\0" * 300_000, "image/png"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@attrs.define
class ImageServer:
    """``/img/<n>.png`` (photo n), ``/text.txt``, ``/big.png`` (300 kB), anything else 404."""

    url: str
    server: ThreadingHTTPServer

    def image(self, n: int) -> str:
        return f"{self.url}/img/{n}.png"

    @property
    def hits(self) -> dict[str, int]:
        return self.server.hits  # type: ignore[attr-defined, no-any-return]


class _ImageHTTPServer(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 refuses connections under load


@contextlib.contextmanager
def image_server() -> Iterator[ImageServer]:
    server = _ImageHTTPServer(("127.0.0.1", 0), _Images)
    server.daemon_threads = True
    server.hits = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ImageServer(f"http://127.0.0.1:{server.server_address[1]}", server)
    finally:
        server.shutdown()
        server.server_close()


@attrs.define
class ServiceProcess:
    """``photoroom-bg serve`` running as a child process on a loopback port."""

    url: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes]

    def client(self, token: str | None = ALICE, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        """Ctrl-C: a graceful shutdown. (uvicorn re-raises SIGTERM after its shutdown, which
        would end the process before coverage could save what it measured.)"""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


COVERAGE_DIR = Path(tempfile.gettempdir()) / f"photoroom-bg-service-coverage-{os.getpid()}"


def coverage_args() -> list[str]:
    """Run a child under coverage when the tests are (see ``merge_child_coverage``)."""
    try:
        import coverage
    except ImportError:
        return []
    current = coverage.Coverage.current()
    if current is None:
        return []
    COVERAGE_DIR.mkdir(exist_ok=True)
    rcfile = Path(__file__).parents[2] / "pyproject.toml"
    return [
        "-m",
        "coverage",
        "run",
        "--parallel-mode",
        f"--rcfile={rcfile}",
        f"--data-file={COVERAGE_DIR / '.coverage'}",
    ]


def merge_child_coverage() -> None:
    """Add what the service children measured to this process's coverage data."""
    try:
        import coverage
        from coverage.data import CoverageData
    except ImportError:
        return
    current = coverage.Coverage.current()
    if current is None or not COVERAGE_DIR.is_dir():
        return
    data = current.get_data()
    for path in sorted(COVERAGE_DIR.glob(".coverage.*")):
        child = CoverageData(basename=str(path))
        child.read()
        data.update(child)
        path.unlink()


def start_service(
    env: dict[str, str], log: Path, *, port: int | None = None, args: tuple[str, ...] = ()
) -> ServiceProcess:
    """Start ``python -m photoroom_bg.service`` and wait until ``/health`` answers.

    Without a ``port``, a free one is chosen; should another process bind it first, the
    service is started again on another (a port the caller asked for is never swapped).
    """
    if port is not None:
        return _start_service(env, log, port, args)
    return start_on_free_ports(lambda: _start_service(env, log, free_port(), args))


def _start_service(
    env: dict[str, str], log: Path, port: int, args: tuple[str, ...]
) -> ServiceProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PHOTOROOM")}
    full_env.update(env)
    full_env.setdefault(
        "PHOTOROOM_BG_NETGUARD_LOG", os.environ.get("PHOTOROOM_BG_NETGUARD_LOG", "")
    )
    start = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                *coverage_args(),
                "-m",
                "photoroom_bg.service",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "info",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
    service = ServiceProcess(f"http://127.0.0.1:{port}", full_env, log, process)

    def healthy() -> bool:
        if process.poll() is not None:
            said = service.log_text()
            taken = "address already in use" in said[start:]
            raise (PortTaken if taken else AssertionError)(
                f"the service exited ({process.returncode}):\n{said}"
            )
        try:
            return httpx.get(f"{service.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        poll(healthy, timeout=60, what="the service to start")
    except BaseException:
        service.stop()
        raise
    return service


def app_settings(root: Path, emulator_url: str, api_key: str = API_KEY, **extra: Any) -> Any:
    """The settings of a service run in this process (an app under ``TestClient``): the
    emulator as Photoroom, a folder sink, the one token ``t0ken``, loopback images allowed."""
    from photoroom_bg.service import ServiceSettings

    return ServiceSettings(
        api_key=api_key,
        base_url=emulator_url,
        sink=str(root / "sink"),
        state_dir=str(root / "state"),
        tokens=("t0ken",),
        allow_networks=("127.0.0.1/32",),
        **extra,
    )


def service_env(
    *, emulator_url: str, sink: str, state_dir: Path, tokens: str = f"{ALICE},{BOB}", **extra: str
) -> dict[str, str]:
    """The environment of a test service: the emulator as Photoroom, loopback images allowed."""
    env = {
        "PHOTOROOM_API_KEY": API_KEY,
        "PHOTOROOM_BASE_URL": emulator_url,
        "PHOTOROOM_BG_SINK": sink,
        "PHOTOROOM_BG_STATE_DIR": str(state_dir),
        "PHOTOROOM_BG_TOKENS": tokens,
        "PHOTOROOM_BG_ALLOW_NETWORKS": "127.0.0.1/32",
        "PHOTOROOM_BG_RETRY_BACKOFF": "0.05",
        "PHOTOROOM_BG_HEARTBEAT_SECONDS": "0.5",
    }
    env.update({f"PHOTOROOM_BG_{k.upper()}": v for k, v in extra.items()})
    return env
