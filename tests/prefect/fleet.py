"""A real Prefect fleet on loopback for the integration test: ``prefect server start`` and
``prefect task serve`` workers as child processes, read back through Prefect's REST API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx

from ..loopback import PortTaken, closed_port, start_on_free_ports
from .conftest import QUIET_PREFECT

# services of the server that this test does not need: less CPU on a shared machine
_IDLE_SERVICES = {
    f"PREFECT_SERVER_SERVICES_{name}_ENABLED": "false"
    for name in ("SCHEDULER", "LATE_RUNS", "FOREMAN", "PAUSE_EXPIRATIONS", "DB_VACUUM", "TRIGGERS")
}


_PREFECT = [sys.executable, "-m", "prefect"]


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    return closed_port()


@attrs.frozen
class Fleet:
    """Where the server listens and what every Prefect process of the fleet gets."""

    home: Path
    api_url: str
    env: Mapping[str, str]

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call to the server's REST API; the decoded JSON answer."""
        response = httpx.request(method, self.api_url + path, timeout=30, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None


def prefect_env(home: Path, api_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a fleet process: quiet settings, the shared home and server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    for name in (
        "PHOTOROOM_API_KEY",
        "PHOTOROOM_BASE_URL",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
    ):
        env.pop(name, None)
    env.update(QUIET_PREFECT)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_LOGGING_COLORS="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@contextmanager
def prefect_server(home: Path) -> Iterator[Fleet]:
    """``prefect server start`` on a free loopback port, over SQLite in ``home`` (started
    again on another should another process bind the port first)."""
    home.mkdir(parents=True, exist_ok=True)
    process, fleet = start_on_free_ports(lambda: _start_server(home, free_port()))
    try:
        yield fleet
    finally:
        stop(process)


def _start_server(home: Path, port: int) -> tuple[subprocess.Popen[bytes], Fleet]:
    api_url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(home, api_url, _IDLE_SERVICES)
    log = home / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    fleet = Fleet(home=home, api_url=api_url, env=prefect_env(home, api_url))
    try:
        deadline = time.monotonic() + 150
        while True:
            if process.poll() is not None:
                said = log.read_text()
                taken = f"Port {port} is already in use" in " ".join(said.split())
                raise (PortTaken if taken else RuntimeError)(
                    "prefect server exited:\n" + said[-3000:]
                )
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    return process, fleet
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("prefect server did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.25)
    except BaseException:
        stop(process)
        raise


@contextmanager
def child(args: list[str], env: Mapping[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process writing to ``log``, stopped on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, env=dict(env), stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop(process)


def task_worker(fleet: Fleet, name: str, env: Mapping[str, str], limit: int) -> Any:
    """``prefect task serve -m photoroom_bg.prefect --limit N`` (a context manager)."""
    args = [*_PREFECT, "task", "serve", "-m", "photoroom_bg.prefect"]
    return child([*args, "--limit", str(limit)], {**fleet.env, **env}, fleet.home / f"{name}.log")


def wait_for_line(
    log: Path, text: str, process: subprocess.Popen[bytes], timeout: float = 120
) -> None:
    """Poll ``log`` until it contains ``text``."""
    deadline = time.monotonic() + timeout
    while text not in (log.read_text(errors="replace") if log.exists() else ""):
        if process.poll() is not None:
            raise RuntimeError(f"{log.name}: process exited:\n" + log.read_text()[-3000:])
        if time.monotonic() > deadline:
            raise RuntimeError(f"{log.name}: no {text!r} in time:\n" + log.read_text()[-3000:])
        time.sleep(0.05)


def stop(process: subprocess.Popen[Any]) -> None:
    """Terminate one child we started (by its pid), kill it after a grace period."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=20)
