"""The ``photoroom-bg`` command: batch background removal from a shell.

Needs the ``cli`` extra (``pip install 'photoroom-bg[cli]'``); ``--engine local`` also needs
``local``. Exit codes: 0 every input done, 1 some inputs failed or were cancelled, 2 a usage
or configuration error, 130 interrupted (Ctrl-C; the manifest is kept and a re-run resumes).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

try:
    import click
except ImportError:  # pragma: no cover - exercised only without the extra
    sys.stderr.write("the photoroom-bg command needs click: pip install 'photoroom-bg[cli]'\n")
    raise SystemExit(2) from None

from . import __version__
from .batch import BatchRemover, BatchReport, JobResult, JobStatus
from .batch._manifest import job_fields
from .errors import ConfigurationError, PhotoroomBGError, ValidationError
from .options import EditOptions, SegmentOptions
from .sources import SourceReader

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
MANIFEST_NAME = ".photoroom-bg-manifest.jsonl"


class _UsageError(click.ClickException):
    """A configuration problem: exit code 2, one clear line."""

    exit_code = EXIT_USAGE


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
            key = Path(api_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise _UsageError(f"cannot read --api-key-file: {exc.strerror}") from None
        if not key:
            raise _UsageError(f"--api-key-file {api_key_file} is empty")
        return key
    return os.environ.get("PHOTOROOM_API_KEY") or None


def _api_options(func: F) -> F:
    options = [
        click.option(
            "--api-key-file",
            type=click.Path(dir_okay=False),
            help="Read the API key from this file (default: $PHOTOROOM_API_KEY).",
        ),
        click.option("--api-key", hidden=True, help="The API key itself (discouraged)."),
        click.option(
            "--base-url",
            metavar="URL",
            help="Send API calls here instead of Photoroom (a proxy or the emulator).",
        ),
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
            type=click.FloatRange(0),
            default=500,
            show_default=True,
            help="Requests per minute (0: no client-side limit).",
        ),
        click.option(
            "--resume/--no-skip-existing",
            "skip_existing",
            default=True,
            help="Skip inputs whose output already exists (default), or redo them.",
        ),
        click.option(
            "--manifest",
            type=click.Path(dir_okay=False),
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
            help="S3 endpoint for s3:// sources and destinations (MinIO, SeaweedFS...).",
        ),
        click.option("--json", "json_out", is_flag=True, help="Machine output: JSON lines."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar, no table."),
        _api_options,
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="photoroom-bg")
def main() -> None:
    """Remove image backgrounds at scale with Photoroom, or offline with --engine local."""


@main.command()
@_batch_options
@click.option(
    "--engine",
    type=click.Choice(["photoroom", "local"]),
    default="photoroom",
    show_default=True,
    help="The Photoroom API, or the offline model (needs the 'local' extra).",
)
@click.option("--model", default="u2netp", show_default=True, help="Model for --engine local.")
@click.option("--format", "fmt", type=click.Choice(["png", "jpg", "webp"]), default="png")
@click.option("--channels", type=click.Choice(["rgba", "alpha"]), default="rgba")
@click.option("--bg-color", metavar="COLOR", help="Fill the background: a name or hex.")
@click.option("--size", type=click.Choice(["preview", "medium", "hd", "full"]), default="full")
@click.option("--crop", is_flag=True, help="Crop to the subject.")
@click.option("--despill", is_flag=True, help="Remove green-screen spill.")
def remove(
    *,
    sources: tuple[str, ...],
    dest: str,
    engine: str,
    model: str,
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
    _run(sources, dest, options, engine=engine, model=model, **common)


@main.command()
@_batch_options
@click.option("--background-color", metavar="COLOR", help="Background colour (hex or name).")
@click.option("--background-prompt", metavar="TEXT", help="Generate an AI background.")
@click.option("--output-size", metavar="WxH", help="e.g. 1000x1000, or 'originalImage'.")
@click.option("--padding", metavar="P", help="Padding around the subject, e.g. 0.1 or 10%.")
@click.option(
    "--shadow",
    "shadow_mode",
    type=click.Choice(["ai.soft", "ai.hard", "ai.floating", "ai.preset-soft", "ai.preset-hard"]),
    help="Add an AI shadow.",
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
            raise _UsageError(f"--param {item!r}: use KEY=VALUE")
        extra[name] = value
    try:
        options = EditOptions(
            background_color=background_color,
            background_prompt=background_prompt,
            output_size=output_size,
            padding=_number_or_text(padding),
            shadow_mode=shadow_mode,  # type: ignore[arg-type]
            export_format=export_format,  # type: ignore[arg-type]
            extra_params=extra,
        )
    except (ValidationError, TypeError) as exc:
        raise _UsageError(str(exc)) from None
    _run(sources, dest, options, engine="photoroom", url_passthrough=url_passthrough, **common)


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
    api_key_file: str | None, api_key: str | None, base_url: str | None, json_out: bool
) -> None:
    """Show the credits left and the plan of your API key."""
    from ._client import PhotoroomClient

    key = _read_key(api_key_file, api_key)
    if not key:
        raise _UsageError("no API key: set PHOTOROOM_API_KEY or pass --api-key-file")
    try:
        with PhotoroomClient(api_key=key, base_url=base_url) as client:
            info = client.account()
    except PhotoroomBGError as exc:
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
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


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def emulator(args: tuple[str, ...]) -> None:
    """Run the offline Photoroom emulator (see ``photoroom-bg emulator --help``)."""
    try:
        from .testing._cli import run_emulator
    except ImportError:
        raise _UsageError(
            "the emulator needs the 'testing' extra: pip install 'photoroom-bg[testing]'"
        ) from None
    sys.exit(run_emulator(list(args)))


# -- the batch run ----------------------------------------------------------------------------


def _stdin_lines() -> Iterator[str]:
    for line in sys.stdin:
        text = line.strip()
        if text and not text.startswith("#"):
            yield text


def _sources(items: Sequence[str]) -> list[Any]:
    if items.count("-") > 1:
        raise _UsageError("'-' (read sources from stdin) may be given once")
    return [_stdin_lines() if item == "-" else item for item in items]


def _local_engine(name: str, model: str, key: str | None) -> Any:
    """The LocalEngine for ``--engine local``; ``None`` means the API, which needs a key."""
    if name == "local":
        from .engines.local import LocalEngine

        return LocalEngine(model)
    if not key:
        raise _UsageError(
            "no API key: set PHOTOROOM_API_KEY or pass --api-key-file "
            "(or use --engine local to work offline)"
        )
    return None


def _run(
    sources: Sequence[str],
    dest: str,
    options: SegmentOptions | EditOptions,
    *,
    engine: str,
    model: str = "u2netp",
    concurrency: int,
    rpm: float,
    skip_existing: bool,
    manifest: str | None,
    allow_private_networks: bool,
    endpoint_url: str | None,
    json_out: bool,
    quiet: bool,
    api_key_file: str | None,
    api_key: str | None,
    base_url: str | None,
    url_passthrough: bool = False,
) -> None:
    if dest.startswith("memory://"):
        raise _UsageError("memory:// keeps nothing once the command ends: use a folder or s3://")
    key = _read_key(api_key_file, api_key) if engine == "photoroom" else None
    if manifest is None and "://" not in dest:
        manifest = str(Path(dest) / MANIFEST_NAME)
    s3_options = {"endpoint_url": endpoint_url} if endpoint_url else {}
    try:
        from .sinks import open_sink

        sink = open_sink(dest, **(s3_options if dest.startswith("s3://") else {}))
        reader = SourceReader(
            allow_private_networks=allow_private_networks, s3_options=s3_options or None
        )
        local = _local_engine(engine, model, key)
        batch = BatchRemover(
            local,  # None: the API engine, made and closed by the batch
            api_key=key,
            base_url=base_url,
            sink=sink,
            options=options,
            concurrency=concurrency,
            requests_per_minute=rpm or None,
            skip_existing=skip_existing,
            manifest=manifest,
            progress=not (quiet or json_out),
            on_result=_print_job if json_out else None,
            reader=reader,
            url_passthrough=url_passthrough,
        )
        handle = batch.submit(_sources(sources))
    except (ConfigurationError, ValidationError) as exc:
        raise _UsageError(str(exc)) from None
    try:
        _finish(handle, dest, manifest, json_out, quiet)
    finally:
        _close(sink, reader, *([local] if local is not None else []))


def _finish(handle: Any, dest: str, manifest: str | None, json_out: bool, quiet: bool) -> None:
    try:
        report = handle.wait()
    except KeyboardInterrupt:
        handle.cancel("interrupted")
        report = _wait_out(handle)
        _summary(report, json_out, quiet)
        where = f" (manifest: {manifest})" if manifest else ""
        click.echo(
            f"\ninterrupted: {report.stored_count} of {report.total_count} stored{where}. "
            "Run the same command again to finish the rest; stored outputs are skipped.",
            err=True,
        )
        sys.exit(EXIT_INTERRUPTED)
    _summary(report, json_out, quiet)
    if report.stop_reason and report.total_count == 0:
        click.echo(f"error: {report.stop_reason}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(EXIT_OK if report.all_ok else EXIT_FAILED)


def _close(*resources: Any) -> None:
    """Close the sink and reader on the loop their connections live on."""
    from . import _loop

    for resource in resources:
        try:
            _loop.run_sync(resource.aclose(), timeout=30)
        except Exception as exc:  # closing must never hide the batch's own outcome
            click.echo(f"warning: could not close {type(resource).__name__}: {exc}", err=True)


def _wait_out(handle: Any) -> BatchReport:
    """After Ctrl-C: let running jobs finish (a second Ctrl-C abandons them)."""
    try:
        report: BatchReport = handle.wait()
    except KeyboardInterrupt:
        click.echo("\nstopped without waiting for running jobs", err=True)
        sys.exit(EXIT_INTERRUPTED)
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


def _print_job(job: JobResult) -> None:
    fields = job_fields(job)
    click.echo(json.dumps({name: fields[name] for name in _JSON_FIELDS}, ensure_ascii=False))


def _summary(report: BatchReport, json_out: bool, quiet: bool) -> None:
    if json_out:
        click.echo(
            json.dumps(
                {
                    "summary": {
                        "total": report.total_count,
                        "succeeded": report.succeeded_count,
                        "skipped": report.skipped_count,
                        "failed": report.failed_count,
                        "cancelled": report.cancelled_count,
                        "billed_calls": report.billed_calls,
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
            click.echo(f"failed: {job.source}: {error_type}: {message}", err=True)
        more = report.failure_counts.get(error_type, 0) - min(len(jobs), 20)
        if more > 0:
            click.echo(f"failed: ... and {more} more {error_type} (see the manifest)", err=True)
    if report.stop_reason and report.stop_reason != "interrupted":
        click.echo(f"stopped early: {report.stop_reason}", err=True)
    if quiet:
        return
    rows = [
        (JobStatus.SUCCEEDED.value, report.succeeded_count),
        (JobStatus.SKIPPED.value + " (already stored)", report.skipped_count),
        (JobStatus.FAILED.value, report.failed_count),
        (JobStatus.CANCELLED.value, report.cancelled_count),
        ("total", report.total_count),
    ]
    click.echo("")
    for label, count in rows:
        click.echo(f"  {label:<26}{count:>8}")
    spent = f", {report.credits_spent:g} credits" if report.credits_spent is not None else ""
    click.echo(f"  {report.billed_calls} billed calls{spent} in {report.duration:.1f} s")


if __name__ == "__main__":  # pragma: no cover
    main()
