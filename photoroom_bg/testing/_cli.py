"""``photoroom-bg emulator`` / ``python -m photoroom_bg.testing``: run the emulator."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence

from ._faults import FAULTS, Faults, parse_duration
from ._server import DEFAULT_API_KEY, PhotoroomEmulator

__all__ = ["banner", "build_parser", "run_emulator"]


def _fault(text: str) -> tuple[str, float]:
    name, _, rate = text.partition(":")
    if name not in FAULTS:
        raise argparse.ArgumentTypeError(f"unknown fault {name!r}; use {', '.join(FAULTS)}")
    try:
        return name, float(rate or "1")
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad probability in {text!r}") from None


def _latency(text: str) -> float | tuple[float, float]:
    try:
        if "-" in text:
            low, high = text.split("-", 1)
            return parse_duration(low), parse_duration(high)
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The emulator command's arguments."""
    parser = argparse.ArgumentParser(
        prog="photoroom-bg emulator",
        description="Run an offline Photoroom API emulator on a local port.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8800, help="port (0: any free port)")
    parser.add_argument(
        "--key",
        action="append",
        dest="keys",
        metavar="KEY",
        help=f"an accepted API key (repeatable; default {DEFAULT_API_KEY})",
    )
    parser.add_argument("--credits", type=float, default=1000, help="credits per key")
    parser.add_argument("--plan", choices=["basic", "plus"], default="basic")
    parser.add_argument("--rpm", type=int, default=None, help="per-key requests per minute")
    parser.add_argument(
        "--latency", type=_latency, default=0.0, help="added latency: 300ms, 1s or 100ms-400ms"
    )
    parser.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="NAME:P",
        help=f"inject a fault with probability P ({', '.join(FAULTS)}), e.g. 503:0.1",
    )
    parser.add_argument("--stall", type=parse_duration, default=30.0, help="stall duration")
    parser.add_argument("--seed", type=int, default=0, help="random seed for faults")
    parser.add_argument(
        "--no-image-work",
        action="store_true",
        help="skip decoding; answer a 1x1 PNG (benchmarks)",
    )
    return parser


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


def run_emulator(argv: Sequence[str] | None = None) -> int:
    """Run until interrupted (Ctrl-C or SIGTERM); return the exit code."""
    args = build_parser().parse_args(argv)
    try:
        faults = Faults(
            latency=args.latency,
            rates=dict(args.fault),
            stall_seconds=args.stall,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    emulator = PhotoroomEmulator(
        args.keys or [DEFAULT_API_KEY],
        credits=args.credits,
        plan=args.plan,
        requests_per_minute=args.rpm,
        faults=faults,
        image_work=not args.no_image_work,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with emulator.serve(args.host, args.port) as url:
        print(banner(url, args.keys or [DEFAULT_API_KEY]))
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0
