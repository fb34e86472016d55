"""The ``photoroom-bg`` command: batch background removal from a shell.

Needs the ``cli`` extra (``pip install 'photoroom-bg[cli]'``); ``--engine local`` also needs
``local``. Exit codes: 0 every input done, 1 some inputs failed or were cancelled (or there was
nothing to do), 2 a usage or setup error, reported before any request is sent and before
anything is created, 130 interrupted (Ctrl-C; the manifest is kept and a re-run resumes),
143 and 129 stopped the same way by SIGTERM (``kill``, ``docker stop``) and SIGHUP; 1 too
when the output could not be written (``--json | head``), which stops the run the same way.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import attrs

try:
    import click
except ImportError:  # pragma: no cover - exercised only without the extra
    sys.stderr.write("the photoroom-bg command needs click: pip install 'photoroom-bg[cli]'\n")
    raise SystemExit(2) from None

from . import __version__
from ._base_client import NOT_GIVEN
from ._cli_checks import (
    Number,
    check_destination,
    check_inputs,
    check_manifest,
    check_not_an_input,
    printable,
)
from ._images import UnreadableFile, read_file
from ._listing import OUTPUT_MARKER
from .batch import BatchRemover, BatchReport, JobResult
from .batch._manifest import job_fields
from .engines import check_engine_options
from .errors import ConfigurationError, PhotoroomBGError, ValidationError
from .options import EditOptions, SegmentOptions
from .sinks._common import DISK_FULL
from .sinks._open import sink_uri
from .sources import SourceReader

__all__ = ["main"]

#: The most an --api-key-file may hold: a key, a newline, perhaps a comment.
KEY_FILE_BYTES = 64 * 1024

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: what a run stopped before its end tells
RERUN = "Run the same command again to finish the rest; stored outputs are skipped."
MANIFEST_NAME = OUTPUT_MARKER  # so walks of a folder around DEST leave DEST out

#: Commands whose code needs an extra, imported only when used: name -> (module, attribute,
#: extra). ``photoroom-bg --help`` still lists them when the extra is missing.
LAZY_COMMANDS = {
    "emulator": ("photoroom_bg.testing._cli", "emulator", "testing"),
    "serve": ("photoroom_bg.service._cli", "serve", "service"),
}


class _UsageError(click.ClickException):
    """A usage or setup problem: ``Error: ...`` on one line, exit code 2."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))


class _NothingToDo(click.ClickException):
    """No image to process: ``Error: no images found in ...``, exit code 1."""

    exit_code = EXIT_FAILED


class _Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the main thread is, as Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


#: signals that stop a run as Ctrl-C does: kill, docker stop, systemd; a closed terminal
_STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


@contextlib.contextmanager
def _stop_signals_as_interrupts() -> Iterator[None]:
    """While a run goes on, SIGTERM and SIGHUP raise :class:`_Terminated` (a
    KeyboardInterrupt) instead of ending the process at once, which would drop the answers
    of calls already paid for. A signal ignored when the run began (``nohup``) stays so."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise _Terminated(signum)

    previous = {}
    for signum in _STOP_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Group(click.Group):
    """A group that also lists, and imports on use, the commands of :data:`LAZY_COMMANDS`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Click's, with output that cannot be written (``> /dev/full``) told on one line, as
        click tells a closed pipe, instead of with a traceback."""
        try:
            return super().main(*args, **kwargs)
        except OSError as exc:
            if exc.errno not in (*DISK_FULL, errno.EIO):
                raise
            _drop_stdout()
            with contextlib.suppress(OSError, ValueError):
                click.echo(f"Error: {_unwritable(exc)}", err=True)
            sys.exit(EXIT_FAILED)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            return _load_command(cmd_name)
        return super().get_command(ctx, cmd_name)


def _drop_stdout() -> None:
    """Point stdout at ``/dev/null`` once it cannot be written: the interpreter's last flush
    of what it still holds would fail again, with a traceback and exit code 120."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _load_command(name: str) -> click.Command:
    import importlib

    module_name, attribute, extra = LAZY_COMMANDS[name]
    try:
        command: click.Command = getattr(importlib.import_module(module_name), attribute)
    except ImportError:
        hint = f"the {name} command needs the '{extra}' extra: pip install 'photoroom-bg[{extra}]'"

        def missing(**_: object) -> None:
            raise _UsageError(hint)

        return click.Command(
            name,
            callback=missing,
            help=f"Not installed: needs the '{extra}' extra.",
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
            add_help_option=False,
        )
    return command


# -- logging and warnings -----------------------------------------------------------------


class _EchoHandler(logging.Handler):
    """Log records as lines on stderr, with control characters escaped."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(printable(self.format(record)), err=True)
        except Exception:  # pragma: no cover - logging must never break the command
            self.handleError(record)


class _LineFormatter(logging.Formatter):
    """A record as the command's other lines: ``warning: ...`` or ``error: ...``, on one line
    (no traceback: ``-v`` shows those)."""

    def format(self, record: logging.LogRecord) -> str:
        level = "error" if record.levelno >= logging.ERROR else "warning"
        return f"{level}: {record.getMessage()}"


@contextlib.contextmanager
def _log_lines() -> Iterator[None]:
    """While a batch runs: its warnings (a cut-out spilled, a sink that stopped answering)
    as ``warning:`` lines with control characters escaped, not Python's bare last-resort
    output of each message. ``-v`` shows the whole log instead."""
    logger = logging.getLogger("photoroom_bg")
    if any(isinstance(h, _EchoHandler) for h in logger.handlers):
        yield  # -v
        return
    handler = _EchoHandler(logging.WARNING)
    handler.setFormatter(_LineFormatter())
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _enable_logging(ctx: click.Context, _param: click.Parameter, verbose: bool) -> None:
    """``-v``: show photoroom_bg's own log (requests, retries, batch decisions) on stderr."""
    if not verbose or ctx.resilient_parsing:
        return
    logger = logging.getLogger("photoroom_bg")
    if any(isinstance(h, _EchoHandler) for h in logger.handlers):
        return  # -v given to the group and to the command
    handler = _EchoHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(previous)

    ctx.call_on_close(restore)


def _verbose_option(func: F) -> F:
    option = click.option(
        "-v",
        "--verbose",
        is_flag=True,
        expose_value=False,
        callback=_enable_logging,
        help="Log each request, retry and decision to stderr.",
    )
    return option(func)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    click.echo(f"warning: {printable(str(message))}", err=True)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Print each warning once, as one ``warning: ...`` line (no file path, no source line)."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        warnings.showwarning = _show_warning
        yield


# -- options shared by the commands ---------------------------------------------------------


def _not_empty(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # "--base-url $URL" with URL unset must not mean Photoroom itself, nor "--endpoint-url"
    # AWS, nor "--api-key-file" the key in the environment
    if value is not None and not value.strip():
        raise _UsageError(
            f"{param.opts[0]} is empty (an unset variable?): give it a value or leave it out"
        )
    return value


def _read_key(api_key_file: str | None, api_key: str | None) -> str | None:
    if api_key:
        click.echo(
            "warning: --api-key leaves the key in your shell history; prefer "
            "PHOTOROOM_API_KEY or --api-key-file",
            err=True,
        )
        return api_key
    if api_key_file:
        try:
            key = read_file(api_key_file, KEY_FILE_BYTES).decode("utf-8").strip()
        except UnreadableFile as exc:
            raise _UsageError(
                f"cannot read --api-key-file {printable(api_key_file)}: {exc}"
            ) from None
        except UnicodeDecodeError as exc:  # a secret: its bytes are not shown
            raise _UsageError(
                f"--api-key-file: the file is not UTF-8 text (byte {exc.start}); save it as UTF-8"
            ) from None
        if not key:
            raise _UsageError(f"--api-key-file {printable(api_key_file)} is empty")
        return key
    return os.environ.get("PHOTOROOM_API_KEY") or None


def _api_options(func: F) -> F:
    options = [
        click.option(
            "--api-key-file",
            type=click.Path(dir_okay=False),
            callback=_not_empty,
            help="Read the API key from this file (default: $PHOTOROOM_API_KEY).",
        ),
        click.option("--api-key", hidden=True, help="The API key itself (discouraged)."),
        click.option(
            "--base-url",
            metavar="URL",
            callback=_not_empty,
            help="Send API calls here instead of Photoroom (a proxy or the emulator).",
        ),
        click.option(
            "--timeout",
            type=Number(0, min_open=True),
            metavar="SECONDS",
            help=(
                "How long one Photoroom call may take (default: $PHOTOROOM_TIMEOUT, else 120; "
                "inf: no limit). Raise it for large images or AI features."
            ),
        ),
        _verbose_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _batch_options(func: F) -> F:
    options = [
        click.argument("sources", nargs=-1, required=True),
        click.option(
            "-o",
            "--output",
            "dest",
            required=True,
            metavar="DEST",
            help="A folder or s3://bucket/prefix for the cut-outs.",
        ),
        click.option("--concurrency", type=click.IntRange(1, 1024), default=16, show_default=True),
        click.option(
            "--rpm",
            type=Number(0),
            default=500,
            show_default=True,
            help="Requests per minute (0: no client-side limit).",
        ),
        click.option(
            "--resume/--no-skip-existing",
            "skip_existing",
            default=True,
            help="Skip inputs whose output is already stored (default), or make them again.",
        ),
        click.option(
            "--manifest",
            metavar="PATH",
            callback=_not_empty,
            help=f"JSON-lines record of every job (default: DEST/{MANIFEST_NAME} for folders).",
        ),
        click.option(
            "--allow-private-networks",
            is_flag=True,
            help=(
                "Let URL sources reach non-public addresses: loopback, private (10/8, "
                "172.16/12, 192.168/16, fc00::/7), link-local, CGNAT and reserved ranges. "
                "Cloud metadata addresses (169.254.169.254, fd00:ec2::254, 100.100.100.200...), "
                "multicast and unspecified addresses stay refused."
            ),
        ),
        click.option(
            "--endpoint-url",
            metavar="URL",
            callback=_not_empty,
            help="S3 endpoint for s3:// sources and destinations (MinIO, SeaweedFS...).",
        ),
        click.option(
            "--create-bucket",
            is_flag=True,
            help="Create the bucket of an s3:// DEST if it does not exist.",
        ),
        click.option("--json", "json_out", is_flag=True, help="Machine output: JSON lines."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar, no table."),
        _api_options,
    ]
    for option in reversed(options):
        func = option(func)
    return func


# -- the commands ---------------------------------------------------------------------------


@click.group("photoroom-bg", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="photoroom-bg")
@_verbose_option
@click.pass_context
def main(ctx: click.Context) -> None:
    """Remove image backgrounds at scale with Photoroom, or offline with --engine local."""
    ctx.with_resource(_warnings_as_lines())


@main.command(short_help="Cut out images into a folder or a bucket.")
@_batch_options
@click.option(
    "--engine",
    type=click.Choice(["photoroom", "local"]),
    default="photoroom",
    show_default=True,
    help="The Photoroom API, or the offline model (needs the 'local' extra).",
)
@click.option(
    "--model", help="Model for --engine local (default: u2netp, bundled), or --model-path's family."
)
@click.option(
    "--model-path",
    type=click.Path(dir_okay=False),
    callback=_not_empty,
    metavar="FILE",
    help=(
        "An .onnx file for --engine local; --model names its model or family (u2net, isnet, "
        "birefnet) unless the file is named after one (u2net.onnx)."
    ),
)
@click.option("--format", "fmt", type=click.Choice(["png", "jpg", "webp"]), default="png")
@click.option("--channels", type=click.Choice(["rgba", "alpha"]), default="rgba")
@click.option("--bg-color", metavar="COLOR", help="Fill the background: a name or hex.")
@click.option("--size", type=click.Choice(["preview", "medium", "hd", "full"]), default="full")
@click.option("--crop", is_flag=True, help="Crop to the subject.")
@click.option("--despill", is_flag=True, help="Remove green-screen spill (API only).")
def remove(
    *,
    sources: tuple[str, ...],
    dest: str,
    engine: str,
    model: str | None,
    model_path: str | None,
    fmt: str,
    channels: str,
    bg_color: str | None,
    size: str,
    crop: bool,
    despill: bool,
    **common: Any,
) -> None:
    """Cut out SOURCES (files, folders, globs, URLs, s3:// prefixes, or - for a list on
    stdin) into DEST."""
    try:
        options = SegmentOptions(
            format=fmt,  # type: ignore[arg-type]
            channels=channels,  # type: ignore[arg-type]
            bg_color=bg_color,
            size=size,  # type: ignore[arg-type]
            crop=crop,
            despill=despill,
        )
    except ValidationError as exc:
        raise _UsageError(str(exc)) from None
    _run(sources, dest, options, engine=engine, model=model, model_path=model_path, **common)


@main.command(short_help="Edit images with Photoroom's /v2/edit.")
@_batch_options
@click.option("--background-color", metavar="COLOR", help="Background colour (hex or name).")
@click.option(
    "--background-prompt",
    metavar="TEXT",
    callback=_not_empty,  # "$PROMPT" unset: a paid AI background nobody described
    help="Generate an AI background.",
)
@click.option("--output-size", metavar="WxH", help="e.g. 1000x1000, or 'originalImage'.")
@click.option("--padding", metavar="P", help="Padding around the subject, e.g. 0.1 or 10%.")
@click.option(
    "--shadow",
    "shadow_mode",
    type=click.Choice(
        [
            "ai.soft",
            "ai.hard",
            "ai.floating",
            "ai.preset-soft",
            "ai.preset-hard",
            "ai.auto-with-overrides",
        ]
    ),
    help="Add an AI shadow (ai.preset-*, ai.auto-with-overrides: with --shadow-model 2026-04-15).",
)
@click.option(
    "--shadow-model",
    "ai_shadows_model_version",
    type=click.Choice(["2026-04-15"]),
    help="AI Shadows model to use (sent as the pr-ai-shadows-model-version header).",
)
@click.option(
    "--export-format", type=click.Choice(["png", "jpeg", "jpg", "webp", "avif"]), default="png"
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="Any other /v2/edit parameter by its API name (repeatable).",
)
@click.option("--url-passthrough", is_flag=True, help="Let Photoroom fetch http(s) sources itself.")
def edit(
    *,
    sources: tuple[str, ...],
    dest: str,
    background_color: str | None,
    background_prompt: str | None,
    output_size: str | None,
    padding: str | None,
    shadow_mode: str | None,
    ai_shadows_model_version: str | None,
    export_format: str,
    params: tuple[str, ...],
    url_passthrough: bool,
    **common: Any,
) -> None:
    """Edit SOURCES with Photoroom's /v2/edit (background, size, padding, shadow) into DEST."""
    extra: dict[str, str] = {}
    for item in params:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise _UsageError(f"--param {printable(item)!r}: use KEY=VALUE")
        flag = _EDIT_FLAGS.get(name)
        if flag is not None:  # the SDK's refusal named export_format, a flag never given
            raise _UsageError(f"--param {printable(name)}=...: use {flag} instead")
        extra[name] = value
    try:
        options = EditOptions(
            background_color=background_color,
            background_prompt=background_prompt,
            output_size=output_size,
            padding=_number_or_text(padding),
            shadow_mode=shadow_mode,  # type: ignore[arg-type]
            ai_shadows_model_version=ai_shadows_model_version,  # type: ignore[arg-type]
            export_format=export_format,  # type: ignore[arg-type]
            extra_params=extra,
        )
    except (ValidationError, TypeError) as exc:
        raise _UsageError(str(exc)) from None
    _run(sources, dest, options, engine="photoroom", url_passthrough=url_passthrough, **common)


#: The /v2/edit parameters the edit command has a flag for (export.format is always sent).
_EDIT_FLAGS = {
    "background.color": "--background-color",
    "background.prompt": "--background-prompt",
    "outputSize": "--output-size",
    "padding": "--padding",
    "shadow.mode": "--shadow",
    "export.format": "--export-format",
}


def _number_or_text(value: str | None) -> float | str | None:
    """``"0.1"`` is a ratio; ``"10%"`` and ``"20px"`` stay text."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


@main.command()
@_api_options
@click.option("--json", "json_out", is_flag=True, help="Print JSON.")
def account(
    api_key_file: str | None,
    api_key: str | None,
    base_url: str | None,
    timeout: float | None,
    json_out: bool,
) -> None:
    """Show the credits left and the plan of your API key."""
    from ._client import PhotoroomClient

    key = _read_key(api_key_file, api_key)
    if not key:
        raise _UsageError("no API key: set PHOTOROOM_API_KEY or pass --api-key-file")
    wait = NOT_GIVEN if timeout is None else timeout
    try:  # a setting's error is a setup error here too (exit 2), as for remove and edit
        client = PhotoroomClient(api_key=key, base_url=base_url, timeout=wait)
    except ConfigurationError as exc:
        raise _UsageError(str(exc)) from None
    try:
        with client:
            info = client.account()
    except PhotoroomBGError as exc:
        click.echo(f"Error: {type(exc).__name__}: {printable(str(exc))}", err=True)
        sys.exit(EXIT_FAILED)
    if json_out:
        payload = {
            "images_available": info.images_available,
            "images_subscription": info.images_subscription,
            "plan": info.plan,
        }
        click.echo(json.dumps(payload))
    else:
        click.echo(f"images available:    {info.images_available:g}")
        click.echo(f"images subscription: {info.images_subscription:g}")
        click.echo(f"plan:                {info.plan or 'unknown'}")


# -- the batch run ----------------------------------------------------------------------------


def _stdin_sources() -> Iterator[str]:
    """Source lines from stdin; refuses an empty list before anything is created."""
    lines = (line.strip() for line in sys.stdin)
    wanted = (text for text in lines if text and not text.startswith("#"))
    first = next(wanted, None)
    if first is None:
        raise _NothingToDo("no sources on stdin (one path, URL or s3:// URI per line)")
    return itertools.chain([first], wanted)


def _sources(items: Sequence[str]) -> list[Any]:
    if items.count("-") > 1:
        raise _UsageError("'-' (read sources from stdin) may be given once")
    return [_stdin_sources() if item == "-" else item for item in items]


def _engine(
    name: str, model: str | None, model_path: str | None, options: SegmentOptions | EditOptions
) -> Any:
    """The LocalEngine for ``--engine local``, its options checked; ``None`` means the API."""
    if name != "local":  # a model given without --engine local was silently not used
        for flag, given in (("--model", model), ("--model-path", model_path)):
            if given is not None:
                raise _UsageError(f"{flag} is for --engine local (an offline model)")
        return None
    if isinstance(options, SegmentOptions) and options.despill:
        raise _UsageError(
            "--despill needs the Photoroom API: the offline model does not remove green-screen "
            "spill. Drop --despill, or leave out --engine local"
        )
    from .engines._onnx_models import MODELS
    from .engines.local import LocalEngine

    if model is None and model_path is not None:  # a file named after its model: u2net.onnx
        model = Path(model_path).stem
        if model not in MODELS:
            raise _UsageError(
                f"--model-path {printable(model_path)}: name its model or family with --model "
                "(u2net, isnet, birefnet, or a model name such as isnet-general-use)"
            )
    local = LocalEngine(model or "u2netp", model_path=model_path)
    try:
        check_engine_options(local, options)
    except ValidationError as exc:
        _close(local)
        raise _UsageError(f"--engine local cannot do this: {exc}") from None
    return local


def _check_setup(
    sources: Sequence[str], dest: str, manifest: str | None, engine: str, key: str | None
) -> None:
    """Every check that needs no network, before anything is created or billed."""
    if dest.startswith("memory://"):
        raise _UsageError("memory:// keeps nothing once the command ends: use a folder or s3://")
    if engine == "photoroom" and not key:
        raise _UsageError(
            "no API key: set PHOTOROOM_API_KEY or pass --api-key-file "
            "(or use --engine local to work offline)"
        )
    try:
        empty = check_inputs(sources)
        check_destination(dest)
        check_not_an_input(dest, sources)
        if manifest is not None:
            check_manifest(manifest)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    if empty and len(empty) == len(sources):
        raise _NothingToDo(f"no images found in {', '.join(printable(s) for s in empty)}")
    for item in empty:
        click.echo(f"warning: no images found in {printable(item)}", err=True)


def _run(
    sources: Sequence[str],
    dest: str,
    options: SegmentOptions | EditOptions,
    *,
    engine: str,
    model: str | None = None,
    model_path: str | None = None,
    concurrency: int,
    rpm: float,
    skip_existing: bool,
    manifest: str | None,
    allow_private_networks: bool,
    endpoint_url: str | None,
    create_bucket: bool,
    json_out: bool,
    quiet: bool,
    api_key_file: str | None,
    api_key: str | None,
    base_url: str | None,
    timeout: float | None,
    url_passthrough: bool = False,
) -> None:
    if engine == "local":  # they were silently not used
        for flag, given in (("--base-url", base_url), ("--timeout", timeout)):
            if given is not None:
                raise _UsageError(
                    f"{flag} is for Photoroom calls, and --engine local makes none: drop "
                    f"{flag}, or leave out --engine local"
                )
    key = _read_key(api_key_file, api_key) if engine == "photoroom" else None
    dest = sink_uri(dest)  # S3://bucket as s3://bucket
    if manifest is None and "://" not in dest:
        manifest = str(Path(dest) / MANIFEST_NAME)
    _check_setup(sources, dest, manifest, engine, key)
    specs = _sources(sources)
    s3_options = {"endpoint_url": endpoint_url} if endpoint_url else {}
    try:
        local = _engine(engine, model, model_path, options)
    except ConfigurationError as exc:
        raise _UsageError(str(exc)) from None
    opened: list[Any] = [] if local is None else [local]  # closed on every way out
    out = _Output()
    # from the first job on, SIGTERM and SIGHUP stop the run as Ctrl-C does
    signals = contextlib.ExitStack()
    signals.enter_context(_log_lines())
    try:
        from .sinks import S3Sink, open_sink

        to_s3 = dest.startswith("s3://")
        sink = open_sink(dest, **({**s3_options, "create_bucket": create_bucket} if to_s3 else {}))
        opened.append(sink)
        if isinstance(sink, S3Sink):  # a missing bucket's advice: the flag, not the argument
            sink._missing_bucket = "pass --create-bucket to create it"
        reader = SourceReader(
            allow_private_networks=allow_private_networks, s3_options=s3_options or None
        )
        reader.policy = attrs.evolve(reader.policy, front_end="cli")  # its advice: the flag
        opened.append(reader)
        batch = BatchRemover(
            local,  # None: the API engine, made and closed by the batch
            api_key=key,
            base_url=base_url,
            timeout=NOT_GIVEN if timeout is None else timeout,
            sink=sink,
            options=options,
            concurrency=concurrency,
            requests_per_minute=rpm or None,
            skip_existing=skip_existing,
            manifest=manifest,
            progress=not (quiet or json_out),
            on_result=out.job if json_out else None,
            reader=reader,
            url_passthrough=url_passthrough,
            track_credits=True,  # the summary says what the run spent
        )
        batch._command = True  # at exit, its advice is the command's, not Python's
        signals.enter_context(_stop_signals_as_interrupts())
        handle = batch.submit(specs)
        out.bind(handle)
    except (PhotoroomBGError, OSError) as exc:  # settings, or a sink that is not usable
        signals.close()
        _close(*opened)
        raise _UsageError(str(exc)) from None
    with signals:
        try:
            _finish(handle, out, sources, dest, manifest, json_out, quiet)
        finally:
            _close(*opened)


def _finish(
    handle: Any,
    out: _Output,
    sources: Sequence[str],
    dest: str,
    manifest: str | None,
    json_out: bool,
    quiet: bool,
) -> None:
    try:
        report = handle.wait()
    except KeyboardInterrupt as exc:
        # Ctrl-C, SIGTERM or SIGHUP: the calls under way finish and are stored
        signum = exc.signum if isinstance(exc, _Terminated) else None
        how = "interrupted" if signum is None else f"stopped by {signal.Signals(signum).name}"
        handle.cancel(how)
        report = _wait_out(handle)
        out.summary(report, dest, json_out, quiet)
        click.echo(f"\n{how}: {_stored(report, manifest)}. {RERUN}", err=True)
        sys.exit(EXIT_INTERRUPTED if signum is None else 128 + signum)
    if report.total_count == 0 and not report.stop_reason:
        raise _NothingToDo(f"no images found in {', '.join(printable(s) for s in sources)}")
    out.summary(report, dest, json_out, quiet)
    if out.error is not None:
        out.failed(report, manifest)
    if report.stop_reason and report.total_count == 0:
        click.echo(f"Error: {printable(report.stop_reason)}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(EXIT_OK if report.all_ok else EXIT_FAILED)


def _close(*resources: Any) -> None:
    """Close engines, sinks and readers on the loop their connections live on."""
    from . import _loop

    for resource in resources:
        try:
            _loop.run_sync(resource.aclose(), timeout=30, cancel=False)
        except Exception as exc:  # closing must never hide the batch's own outcome
            click.echo(f"warning: could not close {type(resource).__name__}: {exc}", err=True)


def _wait_out(handle: Any) -> BatchReport:
    """After Ctrl-C (or SIGTERM, SIGHUP): let running jobs finish (a second one abandons them)."""
    try:
        report: BatchReport = handle.wait()
    except KeyboardInterrupt as exc:
        click.echo("\nstopped without waiting for running jobs", err=True)
        sys.exit(128 + exc.signum if isinstance(exc, _Terminated) else EXIT_INTERRUPTED)
    return report


# what --json prints of each job (the manifest records more)
_JSON_FIELDS = (
    "index",
    "source",
    "status",
    "key",
    "uri",
    "error_type",
    "error",
    "reason",
    "attempts",
)


class _Output:
    """Standard output, for ``--json``'s job lines and the summary. When it cannot be written
    (a pipe whose reader has gone, as in ``... --json | head``; ``> /dev/full``), the run
    stops as on Ctrl-C: the calls under way finish and are stored, the rest is left for a
    re-run, and one line on stderr says so. Each job used to print a traceback instead,
    while the batch went on paying for cut-outs nobody was told about."""

    def __init__(self) -> None:
        self.error: OSError | None = None
        self._handle: Any = None
        self._lock = threading.Lock()

    def bind(self, handle: Any) -> None:
        """The run to stop when the output fails (a job may have failed it already)."""
        with self._lock:
            self._handle = handle
            broken = self.error is not None
        if broken:
            handle.cancel(_unwritable(self.error))

    def job(self, job: JobResult) -> None:
        """``on_result`` for ``--json``: one line per job (run in a worker thread)."""
        if self.error is not None:
            return
        fields = job_fields(job)
        line = json.dumps({name: fields[name] for name in _JSON_FIELDS}, ensure_ascii=False)
        try:
            click.echo(line)
        except OSError as exc:
            with self._lock:
                self.error = exc
                handle = self._handle
            if handle is not None:
                handle.cancel(_unwritable(self.error))

    def summary(self, report: BatchReport, dest: str, json_out: bool, quiet: bool) -> None:
        if self.error is None:
            try:
                _summary(report, dest, json_out, quiet)
            except OSError as exc:
                self.error = exc

    def failed(self, report: BatchReport, manifest: str | None) -> NoReturn:
        """Say on stderr that the output failed, and exit with 1."""
        _drop_stdout()
        rest = f" {RERUN}" if report.stored_count < report.total_count else ""
        with contextlib.suppress(OSError, ValueError):
            click.echo(
                f"Error: {_unwritable(self.error)}: {_stored(report, manifest)}.{rest}", err=True
            )
        sys.exit(EXIT_FAILED)


def _stored(report: BatchReport, manifest: str | None) -> str:
    where = f" (manifest: {printable(manifest)})" if manifest else ""
    return f"{report.stored_count} of {report.total_count} stored{where}"


def _unwritable(error: OSError | None) -> str:
    cause = "unknown" if error is None else error.strerror or str(error)
    return f"the output could not be written ({cause})"


def _summary(report: BatchReport, dest: str, json_out: bool, quiet: bool) -> None:
    if json_out:
        click.echo(
            json.dumps(
                {
                    "summary": {
                        "total": report.total_count,
                        "stored": report.stored_count,
                        "succeeded": report.succeeded_count,
                        "skipped": report.skipped_count,
                        "spilled": report.spilled_count,
                        "failed": report.failed_count,
                        "cancelled": report.cancelled_count,
                        "billed_calls": report.billed_calls,
                        "possibly_billed_calls": report.possibly_billed_calls,
                        "possibly_billed_twice": report.possibly_billed_twice,
                        "credits_spent": report.credits_spent,
                        "stop_reason": report.stop_reason,
                        "duration": round(report.duration, 3),
                    }
                }
            )
        )
        return
    for error_type, jobs in report.failures.items():
        for job in jobs[:20]:
            message = job.error.message if job.error else ""
            click.echo(
                f"failed: {printable(job.source)}: {error_type}: {printable(message)}", err=True
            )
        more = report.failure_counts.get(error_type, 0) - min(len(jobs), 20)
        if more > 0:
            click.echo(f"failed: ... and {more} more {error_type} (see the manifest)", err=True)
    if report.stop_reason and not report.stop_reason.startswith(("interrupted", "stopped by")):
        click.echo(f"stopped early: {printable(report.stop_reason)}", err=True)
    if quiet:
        return
    rows = [
        ("succeeded (made now)", report.succeeded_count),
        ("skipped (already stored)", report.skipped_count),
        *([("spilled (kept, paid for)", report.spilled_count)] if report.spilled_count else []),
        ("failed", report.failed_count),
        ("cancelled", report.cancelled_count),
    ]
    click.echo("")
    for label, count in rows:
        click.echo(f"  {label:<26}{count:>8}")
    click.echo(
        f"  {'stored':<26}{report.stored_count:>8} of {report.total_count} in {printable(dest)}"
    )
    spent = report.credits_spent
    credits = f", {_count(spent, 'credit')}" if spent is not None else ""
    click.echo(
        f"  {_count(report.billed_calls, 'billed call')}{credits} in {report.duration:.1f} s"
    )
    if report.possibly_billed_calls:
        # the account was charged between billed_calls and billed_calls + these
        twice = report.possibly_billed_twice
        click.echo(
            f"  {_count(report.possibly_billed_calls, 'call')} whose answer was lost may have "
            f"been billed too; {_count(twice, 'image')} {'was' if twice == 1 else 'were'} made "
            "after one (perhaps paid twice)"
        )


def _count(number: float, noun: str) -> str:
    return f"{number:g} {noun}{'' if number == 1 else 's'}"


if __name__ == "__main__":  # pragma: no cover
    main()
