"""Setup problems stop the command on one ``Error:`` line, before anything is created or billed.

Each test checks the exit code, that stderr is exactly one line, that the folder the user
gave holds nothing new, and that the emulator saw no request at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from photoroom_bg.cli import main
from photoroom_bg.errors import StorageError
from photoroom_bg.testing import PhotoroomEmulator

from ..conftest import modes_bind
from ..disks import no_file_at
from ..loopback import closed_port
from .conftest import EXAMPLES, run, tree


def assert_refused(result: Result, code: int, message: str) -> None:
    assert result.exit_code == code, result.output + result.stderr
    assert result.stderr.splitlines() == [f"Error: {message}"]
    assert result.stdout == ""


def api_args(emulator: PhotoroomEmulator) -> list[str]:
    return ["--base-url", str(emulator.url), "-q"]


def test_a_missing_input_is_refused_and_the_output_folder_is_not_created(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    before = tree(tmp_path)
    dest = tmp_path / "out"
    result = run(
        "remove", str(folder), str(tmp_path / "nope.jpg"), "-o", str(dest), *api_args(emulator),
        key=emulator.api_key,
    )  # fmt: skip
    assert_refused(result, 2, f"no such file or folder: {tmp_path / 'nope.jpg'}")
    assert tree(tmp_path) == before
    assert emulator.requests == []
    assert emulator.ledger.calls() == 0


@pytest.mark.parametrize("option", ["--base-url", "--endpoint-url", "--api-key-file", "--manifest"])
def test_an_empty_option_is_refused_rather_than_read_as_the_default(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path, option: str
) -> None:
    # "--base-url $URL" with URL unset sent every call to Photoroom itself (paid, where the
    # emulator or a proxy was meant); --endpoint-url to AWS; --api-key-file "" fell back to
    # the key in the environment, --manifest "" said "manifest  is a folder"
    before = tree(tmp_path)
    args = ["remove", str(folder), "-o", str(tmp_path / "out"), option, ""]
    if option != "--base-url":
        args += ["--base-url", str(emulator.url)]
    result = run(*args, "-q", key=emulator.api_key)
    assert_refused(
        result, 2, f"{option} is empty (an unset variable?): give it a value or leave it out"
    )
    assert tree(tmp_path) == before
    assert emulator.ledger.calls() == 0


def test_an_empty_background_prompt_is_refused_rather_than_sent(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    # "--background-prompt $PROMPT" with PROMPT unset sent an empty prompt for an AI
    # background: a paid call for a background nobody described
    before = tree(tmp_path)
    result = run(
        "edit", str(folder), "-o", str(tmp_path / "out"), "--background-prompt", " ",
        *api_args(emulator), key=emulator.api_key,
    )  # fmt: skip
    assert_refused(
        result,
        2,
        "--background-prompt is empty (an unset variable?): give it a value or leave it out",
    )
    assert tree(tmp_path) == before
    assert emulator.ledger.calls() == 0


def test_an_api_key_file_that_is_no_utf8_text_is_refused_without_showing_it(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    # read_text raised UnicodeDecodeError: a traceback, where an unreadable file was a usage
    # error
    key_file = tmp_path / "key"
    key_file.write_bytes(b"s3cret\xff\xfe\n")
    result = run(
        "remove", str(folder), "-o", str(tmp_path / "out"), "--api-key-file", str(key_file),
        "--base-url", str(emulator.url), "-q",
    )  # fmt: skip
    assert_refused(
        result, 2, "--api-key-file: the file is not UTF-8 text (byte 6); save it as UTF-8"
    )
    assert "s3cret" not in result.output
    assert emulator.ledger.calls() == 0


@pytest.mark.parametrize(
    ("param", "flag"),
    [("export.format=webp", "--export-format"), ("background.color=FFFFFF", "--background-color")],
)
def test_a_param_the_edit_command_has_a_flag_for_is_told_that_flag(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path, param: str, flag: str
) -> None:
    # --param export.format=webp was refused for clashing with "export_format", a Python
    # name, and a flag the user had not given
    before = tree(tmp_path)
    result = run(
        "edit", str(folder), "-o", str(tmp_path / "out"), "--param", param, *api_args(emulator),
        key="k",
    )  # fmt: skip
    name = param.split("=")[0]
    assert_refused(result, 2, f"--param {name}=...: use {flag} instead")
    assert tree(tmp_path) == before
    assert emulator.requests == []


def test_an_empty_input_argument_is_called_an_empty_path(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    # an unset variable ("$INPUT"): it said "no such file or folder: " and named nothing
    result = run(
        "remove", str(folder), "", "-o", str(tmp_path / "out"), *api_args(emulator),
        key=emulator.api_key,
    )  # fmt: skip
    assert_refused(result, 2, "an empty path (an unset variable?): name a file, a folder or a glob")
    assert emulator.ledger.calls() == 0


@pytest.mark.parametrize(
    ("target", "why"),
    [("loop.png", "it loops back on itself"), ("gone.png", "gone.png does not exist")],
)
def test_a_dangling_symlink_input_says_why_it_leads_nowhere(
    emulator: PhotoroomEmulator, tmp_path: Path, target: str, why: str
) -> None:
    # it said "no such file or folder" of a name the user can see in the folder
    link = tmp_path / "loop.png"
    link.symlink_to(target)
    before = tree(tmp_path)
    result = run("remove", str(link), "-o", str(tmp_path / "out"), *api_args(emulator),
                 key=emulator.api_key)  # fmt: skip
    assert_refused(result, 2, f"{link} is a symlink to nothing: {why}")
    assert tree(tmp_path) == before
    assert emulator.requests == []


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_input_that_is_a_pipe_or_a_device_is_refused_and_nothing_is_created(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path, kind: str
) -> None:
    # a named pipe, /dev/null or /dev/zero named as an input failed as a job: the output
    # folder and its manifest were created, a summary printed, and the command exited 1
    item = tmp_path / "photo.png"
    what = no_file_at(item, kind)
    before = tree(tmp_path)
    result = run(
        "remove", str(folder), str(item), "-o", str(tmp_path / "out"), *api_args(emulator),
        key=emulator.api_key,
    )  # fmt: skip
    assert_refused(result, 2, f"{item} is {what}, not an image file")
    assert tree(tmp_path) == before
    assert emulator.requests == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # "http://[::1" ended the command with a ValueError traceback, the folder created
        ("http://user:secret@[::1/a.png", "http://[::1/a.png"),
        # no host: each one's job failed (exit 1) after the folder and manifest were made
        ("http://", "http://"),
        ("https:///x.jpg", "https:///x.jpg"),
        ("http://:80/x.jpg", "http://:80/x.jpg"),
    ],
)
def test_a_url_no_request_can_be_made_of_is_refused_and_nothing_is_created(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path, url: str, shown: str
) -> None:
    before = tree(tmp_path)
    result = run(
        "remove", str(folder), url, "-o", str(tmp_path / "out"),
        *api_args(emulator), key=emulator.api_key,
    )  # fmt: skip
    assert result.exit_code == 2, result.output + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {shown} is not a valid URL (")
    assert "secret" not in result.stderr
    assert tree(tmp_path) == before
    assert emulator.requests == []


def test_an_output_folder_that_is_also_an_input_is_refused(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    # every job failed ("is where this batch stores cut-outs"), after the command had
    # written its manifest among the photos
    before = tree(tmp_path)
    result = run("remove", str(folder), "-o", str(folder), *api_args(emulator), key="k")
    assert_refused(
        result,
        2,
        f"the output folder {folder} is also an input: its cut-outs would be read as photos; "
        "write them to another folder",
    )
    assert tree(tmp_path) == before
    assert emulator.requests == []


def test_an_output_path_that_is_a_file_is_refused(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    existing = tmp_path / "cutouts.png"
    existing.write_bytes(b"not a folder")
    before = tree(tmp_path)
    result = run("remove", str(folder), "-o", str(existing), *api_args(emulator), key="k")
    assert_refused(result, 2, f"output folder {existing} is a file, not a folder")
    assert tree(tmp_path) == before
    assert existing.read_bytes() == b"not a folder"
    assert emulator.requests == []


def test_an_output_folder_below_a_file_is_refused(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("hello")
    before = tree(tmp_path)
    dest = existing / "cutouts"
    result = run("remove", str(folder), "-o", str(dest), *api_args(emulator), key="k")
    assert_refused(result, 2, f"cannot create output folder {dest}: {existing} is a file")
    assert tree(tmp_path) == before
    assert emulator.requests == []


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary folder any user can enter (pytest's own are private to their owner)."""
    path = Path(tempfile.mkdtemp(prefix="photoroom-bg-cli-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for inner in path.rglob("*"):
            if inner.is_dir():
                inner.chmod(0o755)
        shutil.rmtree(path)


def run_unprivileged(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the command so that file modes bind it, even when the tests run as root."""
    command = modes_bind([sys.executable, "-m", "photoroom_bg.cli", *args])
    return subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("dest_name", ["locked", "locked/cutouts"])
def test_an_output_folder_that_cannot_be_written_is_refused(
    emulator: PhotoroomEmulator, shared_tmp: Path, dest_name: str
) -> None:
    source = shared_tmp / "in"
    source.mkdir(mode=0o755)
    shutil.copy(EXAMPLES / "coffee.jpg", source / "coffee.jpg")
    (source / "coffee.jpg").chmod(0o644)
    locked = shared_tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    before = tree(shared_tmp)
    dest = shared_tmp / dest_name
    result = run_unprivileged(
        ["remove", str(source), "-o", str(dest), "--base-url", str(emulator.url)],
        {"PHOTOROOM_API_KEY": emulator.api_key},
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    if dest == locked:
        assert line == f"Error: cannot write to output folder {dest}: Permission denied"
    else:
        assert line == f"Error: cannot create output folder {dest} in {locked}: Permission denied"
    assert "Traceback" not in result.stderr
    assert tree(shared_tmp) == before
    assert emulator.requests == []


def test_a_manifest_that_is_a_folder_is_refused(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    before = tree(tmp_path)
    dest = tmp_path / "out"
    result = run(
        "remove", str(folder), "-o", str(dest), "--manifest", str(folder), *api_args(emulator),
        key="k",
    )  # fmt: skip
    assert_refused(result, 2, f"manifest {folder} is a folder, not a file")
    assert tree(tmp_path) == before
    assert emulator.requests == []


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_manifest_that_is_a_pipe_or_a_device_is_refused(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path, kind: str
) -> None:
    # --manifest on a named pipe hung in the check that it can be written, and on /dev/zero
    # (or /dev/full) the batch read it until the kernel killed the process for its memory
    manifest = tmp_path / "m.jsonl"
    what = no_file_at(manifest, kind)
    before = tree(tmp_path)
    result = run(
        "remove", str(folder), "-o", str(tmp_path / "out"), "--manifest", str(manifest),
        *api_args(emulator), key="k",
    )  # fmt: skip
    assert_refused(result, 2, f"manifest {manifest} is {what}, not a file")
    assert tree(tmp_path) == before
    assert emulator.requests == []


def test_a_file_that_is_not_a_manifest_is_refused_untouched_with_no_progress_bar(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    # the run appended its records to the CSV, and the progress bar was drawn (twice)
    # above the error of a batch that could not start
    products = tmp_path / "products.csv"
    products.write_text("sku,url\n1,https://shop.example/a.jpg\n")
    before = tree(tmp_path)
    dest = tmp_path / "out"
    result = run(
        "remove", str(folder), "-o", str(dest), "--manifest", str(products),
        "--base-url", str(emulator.url), key=emulator.api_key,
    )  # fmt: skip
    assert_refused(
        result,
        2,
        f"{products} is not a manifest (it begins 'sku,', a manifest begins with a JSON "
        "record): refusing to write to it; name a new file, or a manifest an earlier batch "
        "wrote",
    )
    assert tree(tmp_path) == before
    assert products.read_text() == "sku,url\n1,https://shop.example/a.jpg\n"
    assert emulator.ledger.calls() == 0


def test_a_manifest_that_cannot_be_created_is_refused(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    existing = tmp_path / "notes.txt"
    existing.write_text("hello")
    before = tree(tmp_path)
    manifest = existing / "run.jsonl"
    result = run(
        "remove", str(folder), "-o", str(tmp_path / "out"), "--manifest", str(manifest),
        *api_args(emulator), key="k",
    )  # fmt: skip
    assert_refused(result, 2, f"cannot create manifest {manifest}: {existing} is a file")
    assert tree(tmp_path) == before
    assert emulator.requests == []


@pytest.mark.parametrize("pattern", ["{empty}", "{empty}/*.jpg", "{folder}/*.gif"])
def test_a_folder_or_glob_without_images_says_so_and_exits_1(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path, pattern: str
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    (folder / "anim.gif").write_bytes(b"GIF89a")  # not an extension a batch reads
    before = tree(tmp_path)
    source = pattern.format(empty=empty, folder=folder)
    result = run("remove", source, "-o", str(tmp_path / "out"), *api_args(emulator), key="k")
    assert_refused(result, 1, f"no images found in {source}")
    assert tree(tmp_path) == before
    assert emulator.requests == []


def test_an_empty_folder_beside_images_is_a_warning_and_the_rest_runs(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    dest = tmp_path / "out"
    result = run("remove", str(folder), str(empty), "-o", str(dest), *api_args(emulator),
                 key=emulator.api_key)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines() == [f"warning: no images found in {empty}"]
    assert emulator.ledger.calls() == 6


def test_an_empty_list_on_stdin_says_so_and_exits_1(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    before = tree(tmp_path)
    result = run("remove", "-", "-o", str(tmp_path / "out"), *api_args(emulator), key="k",
                 stdin="\n# only a comment\n\n")  # fmt: skip
    assert_refused(result, 1, "no sources on stdin (one path, URL or s3:// URI per line)")
    assert tree(tmp_path) == before
    assert emulator.requests == []


def test_despill_with_the_local_engine_is_refused_in_the_commands_words(
    folder: Path, tmp_path: Path
) -> None:
    # the refusal advised "Use despill=False", an argument the command has no way to pass
    pytest.importorskip("onnxruntime")
    before = tree(tmp_path)
    result = run("remove", str(folder), "-o", str(tmp_path / "out"), "--engine", "local",
                 "--despill")  # fmt: skip
    assert result.exit_code == 2, result.output + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: --despill needs the Photoroom API")
    assert "Drop --despill, or leave out --engine local" in line
    assert "despill=" not in line
    assert tree(tmp_path) == before


def test_a_missing_local_model_is_told_the_commands_model_path_which_then_loads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the advice was "pass model_path=", and the command had no way to load a file of one's
    # own: a model kept outside rembg's folders could not be used at all
    pytest.importorskip("onnxruntime")
    from photoroom_bg.engines._onnx_models import _bundled_path

    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "models"))  # nothing downloaded there
    image = tmp_path / "in.jpg"
    image.write_bytes((EXAMPLES / "camera.jpg").read_bytes())
    out = tmp_path / "out"
    missing = run("remove", str(image), "-o", str(out), "--engine", "local", "--model", "u2net")
    assert missing.exit_code == 2
    (line,) = missing.stderr.splitlines()
    assert "model file u2net.onnx not found" in line
    assert "--model-path on the command line" in line
    mine = tmp_path / "mine.onnx"
    shutil.copyfile(_bundled_path(), mine)
    unnamed = run("remove", str(image), "-o", str(out), "--engine", "local", "--model-path",
                  str(mine))  # fmt: skip
    assert unnamed.exit_code == 2
    assert "name its model or family with --model" in unnamed.stderr
    for model in (["--model-path", str(mine)], ["--model", "u2net"]):
        nowhere = f"http://127.0.0.1:{closed_port()}"  # should it go on: no call leaves
        api = run("remove", str(image), "-o", str(out), *model, "--base-url", nowhere, key="k")
        assert api.exit_code == 2  # was run on the API, the model silently not used
        assert f"{model[0]} is for --engine local" in api.stderr
    wrong = run("remove", str(image), "-o", str(out), "--engine", "local", "--model-path",
                str(mine), "--model", "isnet", "-q")  # fmt: skip
    assert wrong.exit_code == 1
    assert "the isnet family feeds (1, 3, 1024, 1024)" in wrong.stderr
    assert "--model on the command line" in wrong.stderr
    made = run("remove", str(image), "-o", str(out), "--engine", "local", "--model-path",
               str(mine), "--model", "u2net", "-q")  # fmt: skip
    assert made.exit_code == 0, made.output + made.stderr
    assert len([p for p in out.iterdir() if not p.name.startswith(".")]) == 1


@pytest.mark.parametrize("flag", [["--timeout", "300"], ["--base-url", "http://127.0.0.1:9"]])
def test_an_api_setting_with_the_offline_engine_is_refused_not_ignored(
    tmp_path: Path, flag: list[str]
) -> None:
    # --timeout and --base-url were silently not used by --engine local: a user who bounded
    # each image's time, or meant to send calls elsewhere, was not told
    image = tmp_path / "in.jpg"
    image.write_bytes((EXAMPLES / "camera.jpg").read_bytes())
    before = tree(tmp_path)
    result = run("remove", str(image), "-o", str(tmp_path / "out"), "--engine", "local", *flag)
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert f"{flag[0]} is for Photoroom calls, and --engine local makes none" in line
    assert f"drop {flag[0]}" in line
    assert tree(tmp_path) == before  # refused before anything is made or loaded


def test_a_missing_key_is_refused_before_the_output_folder_is_created(
    folder: Path, tmp_path: Path
) -> None:
    before = tree(tmp_path)
    result = run("remove", str(folder), "-o", str(tmp_path / "out"))
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: no API key: set PHOTOROOM_API_KEY")
    assert tree(tmp_path) == before


def test_an_s3_destination_that_cannot_be_reached_is_refused(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    # the sink's error escaped the command as a traceback with exit code 1
    env = {
        "PHOTOROOM_API_KEY": emulator.api_key,
        "AWS_ACCESS_KEY_ID": "test-access",
        "AWS_SECRET_ACCESS_KEY": "test-secret-value",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    endpoint = f"http://127.0.0.1:{closed_port()}"
    before = tree(tmp_path)
    args = ["remove", str(folder), "-o", "s3://bucket/cut", "--endpoint-url", endpoint]
    result = CliRunner().invoke(main, [*args, *api_args(emulator)], env=env)
    assert_refused(
        result,
        2,
        "the sink is not usable: cannot look up at s3://bucket/cut/.photoroom-bg-probe: "
        f"EndpointConnectionError (is {endpoint} up?)",
    )
    assert tree(tmp_path) == before
    assert emulator.requests == []


def test_an_s3_uri_with_a_query_string_is_told_the_commands_endpoint_flag(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    # the refusal advised "endpoint_url= and region= as arguments", which the command has
    # no way to pass
    before = tree(tmp_path)
    for dest in (
        "s3://bucket?endpoint=http://127.0.0.1:9/cut",
        "s3://bucket?region=eu/cut",
        "S3://bucket?region=eu/cut",  # an s3:// URI too (it was an "unsupported sink")
    ):
        result = run("remove", str(folder), "-o", dest, *api_args(emulator), key="k")
        assert result.exit_code == 2, result.output + result.stderr
        (line,) = result.stderr.splitlines()
        assert "an s3:// URI takes no query string" in line
        assert "--endpoint-url on the command line" in line
        assert "AWS_REGION" in line
    assert tree(tmp_path) == before
    assert emulator.requests == []


def test_a_spill_folder_that_cannot_be_used_is_refused_naming_the_variable_that_moves_it(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    # the error advised spill_dir=, an argument the command has no way to pass
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    before = tree(tmp_path)
    args = ["remove", str(folder), "-o", str(tmp_path / "out"), *api_args(emulator)]
    env = {"PHOTOROOM_API_KEY": emulator.api_key, "PHOTOROOM_BG_SPILL_DIR": str(blocker)}
    result = CliRunner().invoke(main, args, env=env)
    assert_refused(
        result,
        2,
        "the spill folder is not usable (give spill_dir=, or set PHOTOROOM_BG_SPILL_DIR): "
        f"{blocker} cannot be the sink's folder: {blocker} is a file",
    )
    assert tree(tmp_path) == before
    assert emulator.requests == []


def test_a_sink_that_cannot_be_opened_is_one_error_line(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # opening the sink failing before the run set SIGTERM's handler up must still be the
    # one-line refusal, not an UnboundLocalError from tearing that handler down
    import photoroom_bg.sinks

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise StorageError("the sink refuses to open")

    monkeypatch.setattr(photoroom_bg.sinks, "open_sink", refuse)
    args = ["remove", str(folder), "-o", str(tmp_path / "out"), *api_args(emulator)]
    result = CliRunner().invoke(main, args, env={"PHOTOROOM_API_KEY": emulator.api_key})
    assert_refused(result, 2, "the sink refuses to open")
    assert emulator.requests == []
