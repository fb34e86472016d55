"""``photoroom-bg emulator`` / ``python -m photoroom_bg.testing``: run the emulator.

A click command like the others of ``photoroom-bg`` (click comes with uvicorn, so the
``testing`` extra is enough).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Sequence

import click

from .._cli_checks import Number
from ._faults import FAULTS, Faults, parse_duration
from ._server import DEFAULT_API_KEY, PhotoroomEmulator

__all__ = ["banner", "emulator", "run_emulator"]


def _fault(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, float]:
    rates: dict[str, float] = {}
    for text in values:
        name, _, rate = text.partition(":")
        if name not in FAULTS:
            raise click.BadParameter(f"unknown fault {name!r}; use {', '.join(FAULTS)}")
        try:
            rates[name] = float(rate or "1")
        except ValueError:
            raise click.BadParameter(f"bad probability in {text!r}") from None
    return rates


def _latency(ctx: click.Context, param: click.Parameter, text: str) -> float | tuple[float, float]:
    try:
        if "-" in text.strip()[1:]:  # a range; a leading "-" is a negative duration, refused
            low, high = text.strip().split("-", 1)
            return parse_duration(low), parse_duration(high)
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _duration(ctx: click.Context, param: click.Parameter, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(
    short_help="Run an offline Photoroom emulator.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8800, show_default=True,
    help="Port (0: any free port).",
)  # fmt: skip
@click.option(
    "--key",
    "keys",
    multiple=True,
    metavar="KEY",
    help=f"An accepted API key (repeatable; default {DEFAULT_API_KEY}).",
)
@click.option("--credits", type=Number(0), default=1000, show_default=True, help="Credits per key.")
@click.option("--plan", type=click.Choice(["basic", "plus"]), default="basic", show_default=True)
@click.option("--rpm", type=click.IntRange(1), help="Per-key requests per minute.")
@click.option(
    "--latency",
    default="0",
    callback=_latency,
    metavar="DURATION",
    help="Added latency: 300ms, 1s, or a range such as 100ms-400ms.",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    callback=_fault,
    metavar="NAME:P",
    help=f"Inject a fault with probability P ({', '.join(FAULTS)}), e.g. 503:0.1.",
)
@click.option(
    "--stall",
    default="30s",
    show_default=True,
    callback=_duration,
    metavar="DURATION",
    help="How long the 'stall' fault holds a request.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for faults.")
@click.option(
    "--no-image-work",
    is_flag=True,
    help="Skip decoding and answer a 1x1 PNG (benchmarks); validation and billing stay.",
)
def emulator(
    host: str,
    port: int,
    keys: tuple[str, ...],
    credits: float,
    plan: str,
    rpm: int | None,
    latency: float | tuple[float, float],
    faults: dict[str, float],
    stall: float,
    seed: int,
    no_image_work: bool,
) -> None:
    """Run an offline Photoroom API emulator on a local port, until Ctrl-C or SIGTERM.

    Point any client at the URL it prints, with the key emulator-test-key (or your own
    --key).
    """
    try:
        settings = Faults(latency=latency, rates=faults, stall_seconds=stall, seed=seed)
        server = PhotoroomEmulator(
            list(keys) or [DEFAULT_API_KEY],
            credits=credits,
            plan=plan,
            requests_per_minute=rpm,
            faults=settings,
            image_work=not no_image_work,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        serving = server.serve(host, port)
        url = serving.__enter__()
    except OSError as exc:  # the port is taken, the address is not this machine's
        raise _SetupError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from None
    try:
        click.echo(banner(url, list(server.ledger.accounts)))
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    finally:
        serving.__exit__(None, None, None)


class _SetupError(click.ClickException):
    """A setup problem: ``Error: ...`` on one line, exit code 2 (as the other commands)."""

    exit_code = 2


def banner(url: str, keys: Sequence[str]) -> str:
    """What the emulator prints on start: where it listens, and the lines to paste into
    another shell so the SDK, the command and the examples use it."""
    others = f" (other keys: {', '.join(keys[1:])})" if len(keys) > 1 else ""
    return (
        f"Photoroom emulator listening on {url}\n"
        f"Point photoroom_bg at it from another shell{others}:\n"
        f"\n"
        f"    export PHOTOROOM_BASE_URL={url}\n"
        f"    export PHOTOROOM_API_KEY={keys[0]}\n"
        f"\n"
        f"Ctrl-C stops it."
    )


def run_emulator(
    argv: Sequence[str] | None = None, prog_name: str = "photoroom-bg emulator"
) -> int:
    """Run the emulator command with ``argv`` (default: ``sys.argv[1:]``); return its exit
    code instead of exiting (usage errors are printed and give 2)."""
    try:
        emulator.main(
            list(argv) if argv is not None else None, prog_name=prog_name, standalone_mode=False
        )
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:  # --help
        return exc.exit_code
    except click.Abort:
        return 130
    return 0
