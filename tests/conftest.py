"""Session fixtures shared by every test folder: a real S3 server (SeaweedFS on loopback), and
the guard that keeps every test, and every Python process a test starts, on loopback."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import netguard
from .s3server import S3Server, start_s3_server

_GUARD_SITE = str(Path(__file__).resolve().parent / "_guard_site")
#: The session's temporary folder (set for the children too): what the SDK, the servers and
#: the tests leave in "the" temporary folder goes there, and is removed with it at the end.
TEMP_ENV = "PHOTOROOM_BG_TEST_TMPDIR"


def _xdist_worker(config: pytest.Config) -> str | None:
    """This process's name as a pytest-xdist worker ("gw0", ...), None in any other session
    (a pytest a test starts inherits the worker's environment, not its ``workerinput``)."""
    workerinput: dict[str, object] = getattr(config, "workerinput", {})
    worker = workerinput.get("workerid")
    return worker if isinstance(worker, str) else None


def pytest_configure(config: pytest.Config) -> None:
    """Install the loopback guard here and, through ``sitecustomize``, in Python children."""
    worker = _xdist_worker(config)
    _measure_workers_as_this_process(config, worker)
    netguard.install()
    if netguard.LOG_ENV not in os.environ or worker:  # else an outer session owns it
        # a log per worker: what one worker's children tried is blamed on its own test only
        log = config.rootpath / (f".netguard.{worker}.log" if worker else ".netguard.log")
        log.unlink(missing_ok=True)
        os.environ[netguard.LOG_ENV] = str(log)
    paths = [_GUARD_SITE, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if TEMP_ENV not in os.environ:  # else an outer test session owns it
        # pytest's own tmp_path folders stay where they always are (kept for a look after)
        os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
        folder = tempfile.mkdtemp(prefix="photoroom-bg-tests-")
        os.environ[TEMP_ENV] = os.environ["TMPDIR"] = tempfile.tempdir = folder
        # at exit, after the libraries that clean their own folders in it then (Prefect's
        # test harness): exit callbacks run last registered first
        atexit.register(shutil.rmtree, folder, ignore_errors=True)


def _measure_workers_as_this_process(config: pytest.Config, worker: str | None) -> None:
    """Under ``coverage run -m pytest -n N`` (tox), measure the xdist workers too.

    coverage's ``.pth`` starts measuring any Python process that finds
    ``COVERAGE_PROCESS_START`` set, from its first line: the workers then count the modules our
    pytest plugin imports before any pytest plugin could start coverage. A worker drops the
    variable again, so the servers and commands the tests start are not measured, as without
    workers."""
    if worker:
        os.environ.pop("COVERAGE_PROCESS_START", None)
        return
    if not getattr(config.option, "numprocesses", None):  # no workers to start
        return
    try:
        import coverage
    except ImportError:  # pragma: no cover - nothing measures this run
        return

    current = coverage.Coverage.current()
    if current is not None and current.config.config_file:
        os.environ.setdefault("COVERAGE_PROCESS_START", current.config.config_file)


@pytest.fixture(autouse=True)
def _own_spill_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test (and its children) keeps spilled cut-outs in its own folder, never in the
    user's cache."""
    folder = tmp_path / "spill"
    monkeypatch.setenv("PHOTOROOM_BG_SPILL_DIR", str(folder))
    return folder


def modes_bind(command: list[str]) -> list[str]:
    """``command``, run so that file modes bind it even when the tests run as root: it keeps
    uid 0 (so it still reads the root-owned environment it runs from, whatever that
    environment's modes) but loses the two capabilities that let root ignore modes."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop privileges")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--", *command]


#: Loopback ports of servers whose *own* client libraries keep connections this suite cannot
#: close (Prefect's API: its background services and per-thread task contexts hold clients
#: for the life of the process). A socket to one of these, found unclosed by the garbage
#: collector, is that library's and is not an error; every other unclosed socket still is.
FOREIGN_CLIENT_PORTS: set[int] = set()


@pytest.fixture(autouse=True)
def _foreign_sockets_are_not_ours() -> None:
    for port in FOREIGN_CLIENT_PORTS:
        warnings.filterwarnings(
            "ignore",
            message=rf"unclosed <socket\.socket .*raddr=\('127\.0\.0\.1', {port}\)>",
            category=ResourceWarning,
        )


@pytest.fixture(autouse=True)
def _loopback_only() -> Iterator[None]:
    """Fail any test during which this process, or a Python child, tried to leave loopback."""
    log = Path(os.environ[netguard.LOG_ENV])
    before = log.stat().st_size if log.exists() else 0
    netguard.clear()
    yield
    seen = netguard.attempts()
    if log.exists() and log.stat().st_size > before:
        with log.open("rb") as f:
            f.seek(before)
            seen += f.read().decode(errors="replace").splitlines()
    netguard.clear()
    if seen:
        pytest.fail("tried to reach beyond loopback: " + "; ".join(seen), pytrace=False)


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
