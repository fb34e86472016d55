"""What the service says about jobs, reports and progress: the one place they become JSON.

Items are built from the SDK's own job fields (what manifests record), so a live
:class:`~photoroom_bg.JobResult` and a record read back from a manifest give the same JSON, and
a field the SDK adds later shows up without a change here. Reports and progress snapshots are
walked field by field for the same reason. Statuses are plain strings: a status this module
has never heard of is passed through, counted, and treated as finished without an output.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ..batch import BatchReport, JobResult, Progress
from ..batch._manifest import job_fields
from ._problems import error_code, is_storage_code, storage_detail

__all__ = [
    "ACTIVE_STATUSES",
    "STORED_STATUSES",
    "item_from_record",
    "item_from_result",
    "jsonable",
    "progress_json",
    "report_json",
]

#: statuses whose output is in the sink
STORED_STATUSES = frozenset({"succeeded", "skipped"})
#: statuses of jobs that have not finished
ACTIVE_STATUSES = frozenset({"pending", "running"})
# manifest bookkeeping that says nothing to a client (``uri`` may be a server path)
_INTERNAL = frozenset({"v", "time", "engine", "options_digest", "uri", "type"})


def jsonable(value: Any) -> Any:
    """``value`` as JSON-ready data: enums by value, attrs classes and mappings field by
    field, errors as ``{type, code, message}``, non-finite floats as ``None``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, BaseException):
        return {"type": type(value).__name__, "code": error_code(value), "message": str(value)}
    if attrs.has(type(value)):
        return {f.name: jsonable(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return str(value)


def item_from_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A job item from manifest fields (``job_fields`` or a manifest line)."""
    item = {k: jsonable(v) for k, v in record.items() if k not in _INTERNAL}
    error_type = item.pop("error_type", None)
    message = item.pop("error", None)
    code = error_code(error_type)
    if error_type and message and is_storage_code(code):
        message = storage_detail(code)
    item["error"] = (
        {"type": error_type, "code": code, "message": message} if error_type or message else None
    )
    status = item.get("status")
    if item["error"] is None and status not in STORED_STATUSES | ACTIVE_STATUSES:
        # cancelled (or a status added later): no error type, but a code and the reason,
        # so that an item that ended without an output never looks like one still running
        item["error"] = {"type": None, "code": str(status), "message": item.get("reason")}
    item["stored"] = status in STORED_STATUSES and bool(item.get("key"))
    return item


def item_from_result(result: JobResult) -> dict[str, Any]:
    """A job item from a live :class:`~photoroom_bg.JobResult`."""
    item = item_from_record(job_fields(result))
    if result.error is not None:
        billed = getattr(result.error, "possibly_billed", None)
        if billed is not None:
            item["error"]["possibly_billed"] = bool(billed)
    if result.output is not None:
        item["content_type"] = result.output.content_type
    return item


def _counted(progress: Progress) -> dict[str, Any]:
    data: dict[str, Any] = jsonable(progress)
    for name in ("done", "stored"):
        value = getattr(progress, name, None)
        if isinstance(value, int):
            data[name] = value
    return data


def progress_json(
    progress: Progress | None,
    items: Iterable[Mapping[str, Any]] = (),
    *,
    expected_total: int | None = None,
) -> Any:
    """A progress snapshot; without one, counts by status from ``items``.

    BatchRemover lists its sources lazily, so its ``total`` (and ``eta``) stay unknown
    until the last source is queued; a job knows its image count from the start, and passes
    it as ``expected_total`` to fill them in.
    """
    if progress is not None:
        data = _counted(progress)
        if data.get("total") is None and expected_total is not None:
            data["total"] = expected_total
            left = expected_total - int(data.get("done") or 0)
            rate = float(data.get("rate") or 0)
            data["eta"] = round(left / rate, 4) if left > 0 and rate > 0 else None
        return data
    counts: dict[str, int] = {}
    for item in items:
        status = str(item.get("status"))
        counts[status] = counts.get(status, 0) + 1
    return counts


def report_json(report: BatchReport) -> dict[str, Any]:
    """A :class:`~photoroom_bg.BatchReport` without its kept job results (the items carry
    them): counts, failure counts by type, billed calls, stop reason, duration."""
    data: dict[str, Any] = {}
    for field in attrs.fields(type(report)):
        if field.name == "failures":
            continue
        data[field.name] = jsonable(getattr(report, field.name))
    data["all_ok"] = bool(getattr(report, "all_ok", False))
    return data
