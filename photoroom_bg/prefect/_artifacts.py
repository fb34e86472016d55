"""The flow run's artifacts: a markdown report and a table of failed inputs."""

from __future__ import annotations

import re

from ._summary import RunSummary

__all__ = ["artifact_key", "publish_artifacts", "render_markdown"]


def artifact_key(job_id: str) -> str:
    """The artifact key of a job (Prefect keys: lowercase letters, digits and dashes)."""
    return "photoroom-bg-" + (re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-") or "job")


def _label(name: str) -> str:
    return name.removesuffix("_count").replace("_", " ")


def render_markdown(summary: RunSummary) -> str:
    """The report: state, totals, failures by type, credits, where the outputs are."""
    lines = [
        f"# Background removal: {summary.state}",
        "",
        summary.message + ".",
        "",
        "| | |",
        "|---|---:|",
    ]
    lines += [f"| {_label(name)} | {value:,} |" for name, value in sorted(summary.counts.items())]
    lines += [f"| shards | {summary.shards:,} |", f"| seconds | {summary.duration:,.1f} |"]
    if summary.credits_spent is not None:
        lines.append(f"| credits spent | {summary.credits_spent:,.2f} |")
    if summary.shard_outcomes:
        outcomes = ", ".join(f"{k}: {v:,}" for k, v in sorted(summary.shard_outcomes.items()))
        lines += ["", f"Shards: {outcomes}."]
    if summary.failure_counts:
        lines += ["", "## Failures by type", "", "| error | inputs |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in sorted(summary.failure_counts.items())]
    if summary.stop_reason:
        lines += ["", f"Stopped early: {summary.stop_reason}"]
    lines += [
        "",
        "## Where things are",
        "",
        f"- outputs: `{summary.sink}`",
        f"- per-input records (one JSON line per input, per shard): `{summary.manifests}`",
        "",
        "Run the job again with the same `job_id` to retry what is missing: stored outputs "
        "are skipped, never paid for twice.",
    ]
    return "\n".join(lines)


async def publish_artifacts(summary: RunSummary) -> None:
    """Attach the report (markdown) and, if any input failed, a table of failed inputs
    (source, error type, message) to the current flow run."""
    from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

    key = artifact_key(summary.job_id)
    await acreate_markdown_artifact(
        markdown=render_markdown(summary),
        key=key,
        description=f"Background removal job {summary.job_id}: {summary.message}",
    )
    if summary.failures:
        await acreate_table_artifact(
            table=[note.to_dict() for note in summary.failures],
            key=f"{key}-failures",
            description=f"Failed inputs of job {summary.job_id} (at most the flow's max_failures)",
        )
