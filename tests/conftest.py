"""Session fixtures shared by every test folder: a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .s3server import S3Server, start_s3_server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server on free loopback ports, stopped after the session."""
    workdir: Path = tmp_path_factory.mktemp("seaweedfs")
    yield from start_s3_server(workdir)


@pytest.fixture
def s3_prefix(s3_server: S3Server) -> str:
    """``s3://<shared bucket>/<fresh prefix>``: an empty place for one test's objects.

    Tests share one bucket (each SeaweedFS bucket reserves volumes of its own).
    """
    return f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_new_bucket(s3_server: S3Server) -> str:
    """A fresh bucket name that does not exist yet."""
    return f"test-{uuid.uuid4().hex[:16]}"
