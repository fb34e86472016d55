"""The test S3 server itself: it must start wherever the suite runs, a nearly full disk too."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import s3server
from .disks import small_disk
from .loopback import closed_port, taken_first
from .s3server import start_s3_server


@pytest.fixture
def nearly_full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 GiB tmpfs with 8 MiB (0.8 %) left free, unmounted afterwards."""
    with small_disk(tmp_path / "disk", "1g") as disk:
        subprocess.run(
            ["fallocate", "-l", str((1024 - 8) * 2**20), str(disk / "filler")], check=True
        )
        usage = shutil.disk_usage(disk)
        assert usage.free < usage.total / 100
        yield disk


def test_the_s3_server_starts_and_stores_with_under_one_percent_of_its_disk_free(
    nearly_full_disk: Path,
) -> None:
    workdir = nearly_full_disk / "seaweedfs"
    workdir.mkdir()
    server = start_s3_server(workdir)
    try:
        # start-up waits until an object has been stored, or raises with the server's log
        started = next(server)
        assert started.endpoint_url.startswith("http://127.0.0.1:")
    finally:
        server.close()


@pytest.mark.parametrize("which", range(4), ids=["master", "volume", "filer", "s3"])
def test_a_port_taken_between_choosing_and_binding_it_gets_a_new_start_on_new_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: int
) -> None:
    chosen: list[list[int]] = []
    choose = s3server.free_ports
    with taken_first(closed_port, below=65536 - 10000) as (squatted, _):
        taken = squatted()  # something listens there already

        def first_one_taken(count: int) -> list[int]:
            ports = choose(count)
            if not chosen:  # someone binds one of the first choice before weed does
                ports[which] = taken
            chosen.append(ports)
            return ports

        monkeypatch.setattr(s3server, "free_ports", first_one_taken)
        server = start_s3_server(tmp_path)
        try:
            started = next(server)
            assert len(chosen) == 2
            assert started.endpoint_url == f"http://127.0.0.1:{chosen[1][3]}"
            log = (tmp_path / "attempt-1" / "weed.log").read_text(errors="replace")
            assert "address already in use" in log
        finally:
            server.close()


def test_the_s3_server_leaves_nothing_behind_in_tmp(tmp_path: Path) -> None:
    # weed makes a Unix socket for each of its gRPC ports, and for its filer and S3 ports,
    # in /tmp (whatever TMPDIR says) and never removes them: every run of the suite used to
    # leave six there for good
    server = start_s3_server(tmp_path)
    try:
        started = next(server)
        master, volume, filer, s3 = started.ports
        kinds = {"master": master, "volume": volume, "filer": filer, "s3": s3}
        grpc = [
            Path(f"/tmp/seaweedfs-{kind}-grpc-{port + 10000}.sock") for kind, port in kinds.items()
        ]
        assert all(path.is_socket() for path in grpc)  # the test looks where weed puts them
        local = list(Path(started.socket_folder).glob("*.sock"))
        assert len(local) == 2  # the filer's and the S3 gateway's, in a folder of their own
    finally:
        server.close()
    left = [*grpc, Path(f"/tmp/seaweedfs-filer-{filer}.sock"), Path(f"/tmp/seaweedfs-s3-{s3}.sock")]
    assert not [str(path) for path in left + local if path.exists()]
    assert not [path for path in local if path.parent.exists()]
