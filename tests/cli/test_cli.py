"""The photoroom-bg command, driven as a user drives it: exit codes, files, messages."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from photoroom_bg.cli import MANIFEST_NAME, main
from photoroom_bg.testing import Faults, PhotoroomEmulator

from ..batch.conftest import photo, photo_folder, wait_for_jobs
from ..s3server import S3Server
from .conftest import EXAMPLES, outputs, run


def test_remove_offline_with_the_local_engine_then_resume(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    dest = tmp_path / "cutouts"
    first = run("remove", str(EXAMPLES), "-o", str(dest), "--engine", "local")
    assert first.exit_code == 0, first.output
    assert "succeeded" in first.output
    made = outputs(dest)
    assert len(made) == 5
    for path in made:
        with Image.open(path) as image:
            assert image.mode == "RGBA"
    assert (dest / MANIFEST_NAME).exists()
    again = run("remove", str(EXAMPLES), "-o", str(dest), "--engine", "local", "--json")
    assert again.exit_code == 0
    summary = json.loads(again.stdout.splitlines()[-1])["summary"]
    assert (summary["skipped"], summary["succeeded"]) == (5, 0)


def test_remove_through_the_api_with_json_output(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    args = ["remove", str(folder), "-o", str(dest), "--base-url", str(emulator.url)]
    result = run(*args, "--json", "--crop", key=emulator.api_key)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    jobs, summary = lines[:-1], lines[-1]["summary"]
    assert len(jobs) == 6
    assert {job["status"] for job in jobs} == {"succeeded"}
    assert (summary["succeeded"], summary["billed_calls"], summary["credits_spent"]) == (6, 6, 6)
    assert len(outputs(dest)) == 6
    assert all(r.params.get("crop") == "true" for r in emulator.requests if r.method == "POST")
    assert emulator.api_key not in result.output


def test_cut_outs_stored_inside_the_input_folder_are_never_taken_for_photos_again(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    # a run into folder/cut, then one into another folder: the second paid for a cut-out of
    # each of the first run's cut-outs (12 calls for 6 photos)
    base = ["--base-url", str(emulator.url), "--json"]
    first = run("remove", str(folder), "-o", str(folder / "cut"), *base, key=emulator.api_key)
    assert first.exit_code == 0, first.output
    again = run("remove", str(folder), "-o", str(tmp_path / "other"), *base, key=emulator.api_key)
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout.splitlines()[-1])["summary"]
    assert (summary["succeeded"], summary["billed_calls"]) == (6, 6)
    assert emulator.ledger.calls() == 12
    assert len(outputs(tmp_path / "other")) == 6


def test_a_bad_input_fails_alone_with_exit_code_1(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = ["remove", str(folder), "-o", str(tmp_path / "out"), "--base-url", str(emulator.url)]
    result = run(*args, key=emulator.api_key)
    assert result.exit_code == 1
    assert "broken.png" in result.stderr
    assert "InvalidImageError" in result.stderr
    assert len(outputs(tmp_path / "out")) == 6


def test_out_of_credits_stops_early_and_says_so(folder: Path, tmp_path: Path) -> None:
    emu = PhotoroomEmulator(credits=2, image_work=False)
    with emu.serve() as url:
        args = ["remove", str(folder), "-o", str(tmp_path / "out"), "--base-url", url]
        result = run(*args, "--concurrency", "1", key=emu.api_key)
    assert result.exit_code == 1
    assert "stopped early: OutOfCreditsError" in result.stderr
    assert len(outputs(tmp_path / "out")) == 2


def test_sources_from_stdin(emulator: PhotoroomEmulator, folder: Path, tmp_path: Path) -> None:
    listing = "\n".join(str(p) for p in sorted(folder.iterdir())[:3]) + "\n# a comment\n"
    args = ["remove", "-", "-o", str(tmp_path / "out"), "--base-url", str(emulator.url)]
    result = run(*args, "-q", key=emulator.api_key, stdin=listing)
    assert result.exit_code == 0, result.output
    assert result.output == ""
    assert len(outputs(tmp_path / "out")) == 3


def test_the_key_comes_from_env_or_file_and_a_bare_key_warns(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    base = ["remove", str(folder), "-o", str(tmp_path / "out"), "--base-url", str(emulator.url)]
    missing = run(*base)
    assert missing.exit_code == 2
    assert "PHOTOROOM_API_KEY" in missing.stderr
    key_file = tmp_path / "key.txt"
    key_file.write_text(emulator.api_key + "\n")
    from_file = run(*base, "--api-key-file", str(key_file), "-q")
    assert from_file.exit_code == 0, from_file.output
    bare = run(*base, "--api-key", emulator.api_key, "-q")
    assert bare.exit_code == 0
    assert "shell history" in bare.stderr
    assert emulator.api_key not in bare.output + bare.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bg-color", "not-a-colour"], "not-a-colour"),
        (["--size", "huge"], "huge"),
        (["--concurrency", "0"], "concurrency"),
    ],
)
def test_usage_errors_exit_2(folder: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = run("remove", str(folder), "-o", str(tmp_path), *args, key="k")
    assert result.exit_code == 2
    assert message in result.stderr


def test_memory_destination_is_refused(folder: Path) -> None:
    result = run("remove", str(folder), "-o", "memory://", key="k")
    assert result.exit_code == 2
    assert "memory://" in result.stderr


def test_edit_with_common_options_and_raw_params(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    result = run(
        "edit", str(folder / "p0.png"), "-o", str(dest), "--base-url", str(emulator.url),
        "--background-color", "FFFFFF", "--output-size", "64x64", "--padding", "0.1",
        "--export-format", "jpg", "--param", "referenceBox=originalImage", "-q",
        key=emulator.api_key,
    )  # fmt: skip
    assert result.exit_code == 0, result.output + result.stderr
    (request,) = [r for r in emulator.requests if r.path == "/v2/edit"]
    assert request.params["background.color"] == "FFFFFF"
    assert request.params["outputSize"] == "64x64"
    assert request.params["referenceBox"] == "originalImage"
    (made,) = outputs(dest)
    assert made.suffix == ".jpg"
    bad = run("edit", str(folder), "-o", str(dest), "--param", "novalue", key="k")
    assert bad.exit_code == 2


def test_account_and_emulator_commands(emulator: PhotoroomEmulator) -> None:
    text = run("account", "--base-url", str(emulator.url), key=emulator.api_key)
    assert text.exit_code == 0
    assert "images available:    1000" in text.output
    as_json = run("account", "--base-url", str(emulator.url), "--json", key=emulator.api_key)
    assert json.loads(as_json.stdout)["images_available"] == 1000
    wrong = run("account", "--base-url", str(emulator.url), key="wrong-key")
    assert wrong.exit_code == 1
    # one line, as every other command's failure ("error: ..." in lower case before)
    (line,) = wrong.stderr.splitlines()
    assert line.startswith("Error: AuthenticationError: ")
    # a bad setting is a setup error (exit 2), as for remove and edit: account said 1
    for env in ({"PHOTOROOM_BASE_URL": "localhost:1"}, {"PHOTOROOM_TIMEOUT": "abc"}):
        env["PHOTOROOM_API_KEY"] = emulator.api_key
        bad = CliRunner().invoke(main, ["account"], env=env)
        assert bad.exit_code == 2, bad.output
        (line,) = bad.stderr.splitlines()
        assert line.startswith("Error: PHOTOROOM_"), line
    help_text = subprocess.run(
        [sys.executable, "-m", "photoroom_bg.cli", "emulator", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--latency" in help_text


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"]
)
def test_ctrl_c_or_a_termination_signal_keeps_the_manifest_and_a_rerun_pays_nothing_twice(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C, and SIGTERM or SIGHUP (``kill``, ``docker stop``, systemd, a closed terminal):
    the calls under way finish and are stored, the manifest is kept, and the re-run finishes
    the rest without paying for any image a second time."""
    source = tmp_path / "in"
    source.mkdir()
    images = {f"p{i:02d}.png": photo() for i in range(30)}
    for name, data in images.items():
        (source / name).write_bytes(data)
    dest = tmp_path / "out"
    manifest = dest / MANIFEST_NAME
    # each call is under way for 0.3 s: at the signal, calls the server bills are in flight
    emu = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.3), image_work=False)
    with emu.serve() as url:
        # as from a terminal, whatever this run inherited (under nohup SIGHUP is ignored, and
        # a signal ignored at start stays ignored: see the next test)
        child = _signalled_run(source, dest, url, emu.api_key, _default_signals, signum)
        _, stderr = child.communicate(timeout=60)
        assert child.returncode == 128 + signum, stderr  # 130 for Ctrl-C
        assert "Run the same command again" in stderr
        assert str(manifest) in stderr
        assert ("interrupted" if signum == signal.SIGINT else signum.name) in stderr
        stored_before = len(outputs(dest))
        assert 3 <= stored_before < 30
        billed_before = sum(emu.ledger.billed_per_image().values())
        assert billed_before == stored_before  # every call paid for was stored

        rerun = run("remove", str(source), "-o", str(dest), "--base-url", url, key=emu.api_key)
    assert rerun.exit_code == 0, rerun.stderr
    assert len(outputs(dest)) == 30
    billed = emu.ledger.billed_per_image()
    assert billed == {hashlib.sha256(data).hexdigest(): 1 for data in images.values()}


def _default_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def _signalled_run(
    source: Path,
    dest: Path,
    url: str,
    key: str,
    setup: Callable[[], None],
    signum: signal.Signals,
) -> subprocess.Popen[str]:
    """``photoroom-bg remove source -o dest`` started with ``setup`` run in the child first,
    sent ``signum`` once three jobs are in its manifest."""
    env = {**os.environ, "PHOTOROOM_API_KEY": key}
    args = [sys.executable, "-m", "photoroom_bg.cli", "remove", str(source), "-o", str(dest)]
    args += ["--base-url", url, "--concurrency", "3", "-q"]
    child = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=setup)
    wait_for_jobs(child, dest / MANIFEST_NAME, 3)
    child.send_signal(signum)
    return child


def test_a_run_under_nohup_goes_on_when_its_terminal_closes(tmp_path: Path) -> None:
    """``nohup photoroom-bg remove ...``: SIGHUP was ignored when the run began, and a closed
    terminal does not stop it."""
    source, _ = photo_folder(tmp_path, 12)
    dest = tmp_path / "out"
    emu = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.3), image_work=False)

    def as_nohup() -> None:
        _default_signals()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    with emu.serve() as url:
        child = _signalled_run(source, dest, url, emu.api_key, as_nohup, signal.SIGHUP)
        _, stderr = child.communicate(timeout=60)
    assert child.returncode == 0, stderr
    assert len(outputs(dest)) == 12


def _buffered() -> dict[str, str]:
    """The environment, with stdout buffered as it is by default (PYTHONUNBUFFERED unset):
    what is left in the buffer is written once more at exit."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


@pytest.mark.parametrize(
    ("output", "json_out"),
    [("closed-pipe", True), ("full-device", True), ("closed-pipe", False)],
    ids=["json-into-a-closed-pipe", "json-into-a-full-device", "table-into-a-closed-pipe"],
)
def test_an_output_that_cannot_be_written_stops_the_run_politely(
    tmp_path: Path, output: str, json_out: bool
) -> None:
    # "... --json | head -2": every job printed a traceback on stderr while the batch went
    # on paying, and the summary ended the command with a raw BrokenPipeError
    source, _ = photo_folder(tmp_path, 12)
    dest = tmp_path / "out"
    emu = PhotoroomEmulator(credits=1000, faults=Faults(latency=0.05), image_work=False)
    args = [sys.executable, "-m", "photoroom_bg.cli", "remove", str(source), "-o", str(dest)]
    args += ["--concurrency", "2", *(["--json", "-q"] if json_out else [])]
    env = {**_buffered(), "PHOTOROOM_API_KEY": emu.api_key}
    if output == "closed-pipe":
        reader, stdout = os.pipe()
        os.close(reader)  # the reader has gone before the first line
    else:
        stdout = os.open("/dev/full", os.O_WRONLY)
    with emu.serve() as url:
        args += ["--base-url", url]
        try:
            done = subprocess.run(
                args, stdout=stdout, stderr=subprocess.PIPE, env=env, text=True, timeout=120
            )
        finally:
            os.close(stdout)
        billed = emu.ledger.calls()
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    stored = len(outputs(dest))
    assert billed == stored  # every call paid for was stored
    cause = "Broken pipe" if output == "closed-pipe" else "No space left on device"
    message = f"Error: the output could not be written ({cause}): {stored} of 12 stored"
    assert message in done.stderr
    if json_out:  # the first line could not be written: the run stopped
        assert stored < 12
        assert "Run the same command again to finish the rest" in done.stderr
    else:  # the table comes once every job has ended
        assert stored == 12


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["remove", "--help"]])
def test_a_command_whose_output_finds_no_room_says_so_on_one_line(args: list[str]) -> None:
    # "> /dev/full" ended every command with a traceback (click tells only a closed pipe)
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "photoroom_bg.cli", *args],
            stdout=full,
            stderr=subprocess.PIPE,
            env=_buffered(),
            text=True,
            timeout=60,
        )
    assert (done.returncode, done.stderr) == (
        1,
        "Error: the output could not be written (No space left on device)\n",
    )


def test_the_console_script_is_installed() -> None:
    script = shutil.which("photoroom-bg", path=os.path.dirname(sys.executable))
    assert script is not None
    result = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    assert "remove" in result.stdout
    assert "edit" in result.stdout


def s3_env(emulator: PhotoroomEmulator, s3_server: S3Server) -> dict[str, str]:
    """The environment of a command run against ``emulator`` and ``s3_server``."""
    return {
        "PHOTOROOM_API_KEY": emulator.api_key,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": s3_server.region,
    }


def test_remove_into_and_from_a_real_s3_bucket(
    emulator: PhotoroomEmulator, folder: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    env = s3_env(emulator, s3_server)
    common = ["--base-url", str(emulator.url), "--endpoint-url", s3_server.endpoint_url, "--json"]
    upload = CliRunner().invoke(
        main, ["remove", str(folder), "-o", f"{s3_prefix}/cut", *common], env=env
    )
    assert upload.exit_code == 0, upload.output + upload.stderr
    jobs = [json.loads(line) for line in upload.stdout.splitlines()[:-1]]
    assert all(job["uri"].startswith(f"{s3_prefix}/cut/") for job in jobs)
    # the cut-outs are sources too: an s3:// prefix is listed and read
    again = CliRunner().invoke(
        main, ["remove", f"{s3_prefix}/cut/", "-o", str(folder.parent / "back"), *common], env=env
    )
    assert again.exit_code == 0, again.output + again.stderr
    assert len(outputs(folder.parent / "back")) == 6
    assert s3_server.secret_key not in upload.output + again.output + upload.stderr


def test_a_missing_bucket_is_told_the_commands_flag_which_creates_it(
    emulator: PhotoroomEmulator, folder: Path, s3_server: S3Server, s3_new_bucket: str
) -> None:
    # the error advised create_bucket=True, an argument the command had no way to pass
    env = s3_env(emulator, s3_server)
    args = ["remove", str(folder), "-o", f"s3://{s3_new_bucket}/cut", "--json"]
    args += ["--base-url", str(emulator.url), "--endpoint-url", s3_server.endpoint_url]
    missing = CliRunner().invoke(main, args, env=env)
    assert missing.exit_code != 0
    assert f"bucket '{s3_new_bucket}' does not exist (pass --create-bucket" in missing.stderr
    assert "create_bucket=True" not in missing.stderr
    assert emulator.ledger.calls() == 0
    made = CliRunner().invoke(main, [*args, "--create-bucket"], env=env)
    assert made.exit_code == 0, made.output + made.stderr
    jobs = [json.loads(line) for line in made.stdout.splitlines()[:-1]]
    assert len(jobs) == 6
    assert all(job["uri"].startswith(f"s3://{s3_new_bucket}/cut/") for job in jobs)


def test_the_command_closes_its_sink_and_reader(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import photoroom_bg.sinks as sinks
    from photoroom_bg.sources import SourceReader

    closed: list[str] = []
    real_open = sinks.open_sink

    def recording_open(target: Any, **options: Any) -> Any:
        sink = real_open(target, **options)
        real_close = sink.aclose

        async def aclose() -> None:
            closed.append("sink")
            await real_close()

        sink.aclose = aclose  # type: ignore[method-assign]
        return sink

    real_reader_close = SourceReader.aclose

    async def reader_close(self: SourceReader) -> None:
        closed.append("reader")
        await real_reader_close(self)

    monkeypatch.setattr(sinks, "open_sink", recording_open)
    monkeypatch.setattr(SourceReader, "aclose", reader_close)
    args = ["remove", str(folder), "-o", str(tmp_path / "out"), "--base-url", str(emulator.url)]
    assert run(*args, "-q", key=emulator.api_key).exit_code == 0
    assert sorted(closed) == ["reader", "sink"]


def test_a_refused_url_is_told_the_commands_own_flag(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    # the refusal advised allow_private_networks=True, an SDK argument the command has no
    # way to pass (127.0.0.2 is loopback, refused by default: no connection is made)
    url = "http://127.0.0.2:9/photo.png"
    args = ["remove", url, "-o", str(tmp_path / "out"), "--base-url", str(emulator.url)]
    result = run(*args, key=emulator.api_key)
    assert result.exit_code == 1
    assert "UnsafeURLError" in result.stderr
    assert "(pass --allow-private-networks for trusted internal hosts)" in result.stderr
    assert "allow_private_networks" not in result.stderr
    assert emulator.ledger.calls() == 0


def test_a_timed_out_call_is_told_the_commands_timeout_which_then_lets_it_finish(
    tmp_path: Path,
) -> None:
    # the command had no way to wait longer than 120 s, while its failure line advised
    # raising "the client's timeout"
    emu = PhotoroomEmulator(credits=100, faults=Faults(latency=0.5), image_work=False)
    source = tmp_path / "p.png"
    source.write_bytes(photo())
    args = ["remove", str(source), "-o", str(tmp_path / "out"), "-q", "--rpm", "0"]
    with emu.serve():
        args += ["--base-url", str(emu.url)]
        slow = run(*args, "--timeout", "0.1", key=emu.api_key)
        assert slow.exit_code == 1, slow.output
        assert "APITimeoutError" in slow.stderr
        assert "--timeout on the command line" in slow.stderr
        assert run(*args, "--timeout", "30", key=emu.api_key).exit_code == 0
        account = run("account", "--base-url", str(emu.url), "--timeout", "0.1", key=emu.api_key)
        assert account.exit_code == 1
        assert "APITimeoutError" in account.stderr
    assert len(outputs(tmp_path / "out")) == 1
    for bad in ("0", "-1", "nan"):
        assert run(*args, "--timeout", bad, key=emu.api_key).exit_code == 2
