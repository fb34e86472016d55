"""The test session keeps what lands in the temporary folder to itself."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .conftest import TEMP_ENV


def test_temporary_files_of_the_session_and_its_children_go_to_its_own_folder(
    tmp_path: Path,
) -> None:
    """A batch whose sink refuses its manifest keeps it in the temporary folder, the claims
    of batches live there, and the servers the tests start write there: all of it goes to a
    folder of the session's own, removed when it ends, never to the user's ``/tmp``."""
    folder = os.environ[TEMP_ENV]
    assert Path(folder).name.startswith("photoroom-bg-tests-")
    assert tempfile.gettempdir() == folder
    child = subprocess.run(
        [sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stdout.strip() == folder
    assert not tmp_path.is_relative_to(folder)  # pytest's own folders stay where they were


def test_a_session_of_a_few_tests_leaves_nothing_in_the_temporary_folder(tmp_path: Path) -> None:
    """Run by their path, the Prefect tests load their conftest before the session has its
    folder: the Prefect home they made there used to stay in ``/tmp`` for good."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {key: value for key, value in os.environ.items() if key != TEMP_ENV}
    env["TMPDIR"] = str(temporary)
    root = Path(__file__).resolve().parent.parent
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only"]
    child = subprocess.run(
        [*pytest, "--basetemp", str(tmp_path / "base"), "tests/prefect/test_parts.py"],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=300,
    )
    assert child.returncode == 0, child.stdout + child.stderr
    assert not [path.name for path in temporary.iterdir()]
