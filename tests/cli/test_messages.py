"""What the command prints: help, warnings, log lines, summaries and hostile file names."""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path

import click
import pytest

from photoroom_bg import cli
from photoroom_bg.cli import main
from photoroom_bg.testing import PhotoroomEmulator

from ..disks import fill, no_file_at, small_disk
from .conftest import run, tree

RST_MARKUP = re.compile(r"``|:(class|func|meth|mod|doc|attr|data|exc|ref):`|`[^`]+`_")


def all_commands() -> list[tuple[str, ...]]:
    ctx = click.Context(main)
    return [(), *((name,) for name in main.list_commands(ctx))]


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: " ".join(c) or "main")
def test_help_has_no_restructuredtext_markup(command: tuple[str, ...]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: photoroom-bg {' '.join(command)}".rstrip() + " ")
    assert "-h, --help" in result.output  # the same framework and style for every command
    assert not RST_MARKUP.search(result.output), result.output


def test_the_emulator_command_keeps_its_options() -> None:
    text = run("emulator", "--help").output
    for option in ("--host", "--port", "--key", "--credits", "--plan", "--rpm", "--latency",
                   "--fault", "--stall", "--seed", "--no-image-work"):  # fmt: skip
        assert option in text


@pytest.mark.parametrize("credits", ["nan", "-1"])
def test_emulator_credits_that_are_no_balance_are_a_usage_error(credits: str) -> None:
    # -1 ran an emulator whose keys were out of credits; NaN one whose keys never ran out
    result = run("emulator", "--port", "0", "--credits", credits)
    assert result.exit_code == 2
    assert "Invalid value for '--credits'" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "said"),
    [
        # it said "not a duration: ''": the leading "-" was taken for a range
        (["--latency", "-1s"], "Invalid value for '--latency': not a duration: '-1s'"),
        (["--key", ""], "an API key must not be empty (an unset variable?)"),
    ],
)
def test_emulator_options_with_no_valid_meaning_are_usage_errors(
    args: list[str], said: str
) -> None:
    result = run("emulator", "--port", "0", *args)
    assert result.exit_code == 2
    assert said in result.stderr


def test_rpm_nan_is_a_usage_error_naming_the_option(folder: Path, tmp_path: Path) -> None:
    # it said "requests_per_minute must be a number, not nan": the SDK's name, not the option
    result = run("remove", str(folder), "-o", str(tmp_path / "out"), "--rpm", "nan", key="k")
    assert result.exit_code == 2
    assert (
        result.stderr.splitlines()[-1] == "Error: Invalid value for '--rpm': 'nan' is not a number."
    )
    assert not (tmp_path / "out").exists()


def test_rpm_inf_means_no_client_side_limit(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    # it was accepted, then failed every image: "delay must be a non-negative number"
    out = tmp_path / "out"
    result = run("remove", str(folder), "-o", str(out), "--base-url", str(emulator.url),
                 "--rpm", "inf", "-q", key=emulator.api_key)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len([p for p in out.iterdir() if not p.name.startswith(".")]) == 6
    assert emulator.ledger.calls() == 6


def test_a_command_whose_extra_is_missing_says_which_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(cli.LAZY_COMMANDS, "emulator", ("no_such_module_here", "x", "testing"))
    listing = run("--help")
    assert "emulator  Not installed: needs the 'testing' extra." in listing.output
    result = run("emulator", "--port", "0")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "Error: the emulator command needs the 'testing' extra: pip install 'photoroom-bg[testing]'"
    ]


def test_a_photoroom_warning_prints_as_one_line(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    result = run(
        "edit", str(folder), "-o", str(tmp_path / "out"), "--base-url", str(emulator.url),
        "--param", "madeUpThing=1", "-q", key=emulator.api_key,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    # six images got the same answer: one line, no file path, no source line, no class name
    assert result.stderr.splitlines() == [
        "warning: Photoroom ignored unsupported parameters: madeUpThing"
    ]


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_logs_requests_to_stderr_and_only_while_it_runs(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path, where: str
) -> None:
    args = ["remove", str(folder / "p0.png"), "-o", str(tmp_path / "out"), "-q",
            "--base-url", str(emulator.url)]  # fmt: skip
    args = ["-v", *args] if where == "before" else [*args, "--verbose"]
    logger = logging.getLogger("photoroom_bg")
    handlers, level = list(logger.handlers), logger.level
    result = run(*args, key=emulator.api_key)
    assert result.exit_code == 0, result.stderr
    assert re.search(r"DEBUG photoroom_bg: POST /v1/segment -> 200 \(attempt 1", result.stderr)
    assert emulator.api_key not in result.stderr
    assert (logger.handlers, logger.level) == (handlers, level)
    quiet = run(*[a for a in args if a not in ("-v", "--verbose")], key=emulator.api_key)
    assert "POST /v1/segment" not in quiet.stderr


HOSTILE_NAMES = [
    "title\x1b]0;owned\x07.png",  # would rename the terminal window
    "forged\n[ok] all-good.png",  # would print a line of its own
    "right-to-left\u202egnp.exe.png",  # would display reversed
]


def test_file_names_are_printed_with_control_characters_escaped(
    emulator: PhotoroomEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for name in HOSTILE_NAMES:
        (source / name).write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    result = run("remove", str(source), "-o", str(tmp_path / "out"), "-q",
                 "--base-url", str(emulator.url), key=emulator.api_key)  # fmt: skip
    assert result.exit_code == 1
    printed = result.stderr
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]", printed)
    lines = printed.splitlines()
    assert len(lines) == len(HOSTILE_NAMES)
    assert all(line.startswith("failed: ") for line in lines)
    assert r"title\x1b]0;owned\x07.png: InvalidImageError" in printed
    assert r"forged\n[ok] all-good.png: InvalidImageError" in printed
    assert r"right-to-left\u202egnp.exe.png: InvalidImageError" in printed


def test_a_missing_input_with_a_newline_in_its_name_stays_on_one_line(tmp_path: Path) -> None:
    before = tree(tmp_path)
    name = str(tmp_path / "a\nError: forged.jpg")
    result = run("remove", name, "-o", str(tmp_path / "out"), key="k")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"Error: no such file or folder: {tmp_path}/a\\nError: forged.jpg"
    ]
    assert tree(tmp_path) == before


def test_the_summary_counts_made_skipped_and_stored(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    base = ["--base-url", str(emulator.url)]
    first = run("remove", str(folder / "p0.png"), str(folder / "p1.png"), "-o", str(dest), *base,
                key=emulator.api_key)  # fmt: skip
    assert first.exit_code == 0, first.stderr
    second = run("remove", str(folder), "-o", str(dest), *base, key=emulator.api_key)
    assert second.exit_code == 0, second.stderr
    table = second.stdout
    assert re.search(r"succeeded \(made now\)\s+4\n", table)
    assert re.search(r"skipped \(already stored\)\s+2\n", table)
    assert re.search(rf"stored\s+6 of 6 in {re.escape(str(dest))}\n", table)
    assert "4 billed calls, 4 credits" in table
    as_json = run("remove", str(folder), "-o", str(dest), *base, "--json", key=emulator.api_key)
    summary = json.loads(as_json.stdout.splitlines()[-1])["summary"]
    assert (summary["stored"], summary["succeeded"], summary["skipped"]) == (6, 0, 6)


def test_the_progress_bar_uses_the_summary_words(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    result = run("remove", str(folder), "-o", str(tmp_path / "out"),
                 "--base-url", str(emulator.url), key=emulator.api_key)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "failed=0, made=6, skipped=0]" in result.stderr


def test_the_summary_says_which_calls_may_have_been_billed_twice(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    # the server bills the first call and drops its answer; the retry is billed again. The
    # summary said "1 billed calls, 2 credits" and left the user to guess why
    base = ["--base-url", str(emulator.url)]
    emulator.inject(None, "bill-reset")  # the balance read, then the first call
    result = run("remove", str(folder / "p0.png"), "-o", str(tmp_path / "out"), *base,
                 key=emulator.api_key)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert emulator.ledger.calls() == 2
    assert "1 billed call, 2 credits" in result.stdout
    assert (
        "1 call whose answer was lost may have been billed too; 1 image was made after "
        "one (perhaps paid twice)"
    ) in result.stdout
    emulator.inject(None, "bill-reset")
    as_json = run("remove", str(folder / "p1.png"), "-o", str(tmp_path / "out"), *base, "--json",
                  key=emulator.api_key)  # fmt: skip
    summary = json.loads(as_json.stdout.splitlines()[-1])["summary"]
    assert (summary["billed_calls"], summary["possibly_billed_calls"]) == (1, 1)
    assert summary["possibly_billed_twice"] == 1
    clean = run("remove", str(folder / "p2.png"), "-o", str(tmp_path / "out"), *base,
                key=emulator.api_key)  # fmt: skip
    assert "1 billed call, 1 credit in" in clean.stdout
    assert "may have been billed" not in clean.stdout


def test_a_second_command_into_the_same_folder_is_refused_before_it_pays(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path
) -> None:
    import fcntl

    dest = tmp_path / "out"
    dest.mkdir()
    with open(dest / ".photoroom-bg-manifest.jsonl", "ab") as held:  # as a running command
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run("remove", str(folder), "-o", str(dest), "--base-url", str(emulator.url),
                     key=emulator.api_key)  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: another run is using the manifest ")
    assert len(result.stderr.splitlines()) == 1
    assert emulator.ledger.calls() == 0
    assert [p.name for p in dest.iterdir()] == [".photoroom-bg-manifest.jsonl"]
    again = run("remove", str(folder), "-o", str(dest), "--base-url", str(emulator.url),
                key=emulator.api_key)  # fmt: skip
    assert again.exit_code == 0, again.stderr


def test_a_paid_cut_out_the_destination_refuses_is_a_warning_line_and_a_summary_row(
    emulator: PhotoroomEmulator, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the batch's warnings (a cut-out kept in the spill folder) reached the terminal through
    # Python's bare last-resort output: no "warning:", the control characters of a folder's
    # name raw; and the summary counted the spilled jobs nowhere, --json included
    monkeypatch.setenv("PHOTOROOM_BG_SPILL_DIR", str(tmp_path / "spill"))
    manifest = str(tmp_path / "m.jsonl")
    with small_disk(tmp_path / "disk", "256k") as disk:
        dest = disk / "o\x1b[31mRED"
        dest.mkdir()
        fill(disk)
        common = ["-o", str(dest), "--manifest", manifest, "--base-url", str(emulator.url)]
        runs = [
            run("remove", str(folder), *common, *flags, key=emulator.api_key)
            for flags in (["-q"], [], ["--json"])
        ]
    quiet, table, as_json = runs
    assert [r.exit_code for r in runs] == [1, 1, 1], quiet.output + quiet.stderr
    kept = len(list((tmp_path / "spill").rglob("*.png")))
    assert kept == emulator.ledger.calls() >= 1  # the full disk stopped each run; no new call
    assert "\x1b" not in quiet.stderr
    spilled = [line for line in quiet.stderr.splitlines() if "did not take" in line]
    assert spilled, quiet.stderr
    assert all(line.startswith("warning: the sink did not take ") for line in spilled)
    assert re.search(rf"^  spilled \(kept, paid for\) +{kept}$", table.stdout, re.M)
    assert json.loads(as_json.stdout.splitlines()[-1])["summary"]["spilled"] == kept


def test_an_emulator_port_already_taken_is_one_error_line() -> None:
    # an OSError traceback ("Address already in use")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("emulator", "--port", str(port))
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: cannot listen on 127.0.0.1 port {port}: ")
    assert "Traceback" not in result.output


def test_a_log_level_uvicorn_does_not_know_is_a_usage_error() -> None:
    # a ValueError traceback from logging's configuration ("Unable to configure logger")
    result = run("serve", "--port", "0", "--log-level", "nonsense")
    assert result.exit_code == 2
    assert "Invalid value for '--log-level'" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("kind", ["missing", "fifo", "device"])
def test_an_api_key_file_that_cannot_be_read_is_named_and_never_waited_for(
    folder: Path, tmp_path: Path, kind: str
) -> None:
    # the error named no file ("cannot read --api-key-file: No such file or directory"), a
    # named pipe held the command forever, and /dev/zero was read until memory ran out
    key_file = tmp_path / "key"
    if kind != "missing":
        no_file_at(key_file, kind)
    result = run("remove", str(folder), "-o", str(tmp_path / "out"), "--api-key-file",
                 str(key_file))  # fmt: skip
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: cannot read --api-key-file {key_file}: ")
    what = {"missing": "No such file", "fifo": "a FIFO", "device": "a character device"}[kind]
    assert what in line
    assert not (tmp_path / "out").exists()
