"""The platforms' own usage and billing exports, read into one :class:`Invoice`.

Each shape is read as its platform documents it (the field lists below are theirs):

- ``runpod-v2``: RunPod REST v2 ``GET https://api.runpod.io/v2/billing/serverless``
  (``listServerlessBilling``; https://docs.runpod.io/api-reference-v2/billing/get-serverless-billing-history,
  spec ``api-reference-v2/openapi.json`` of github.com/runpod/docs). An object ``{"records": [...],
  "metadata": {...}}``; each record (``ServerlessBillingRecord``) has ``startTime`` (inclusive),
  ``endTime`` (exclusive), ``serverlessId``, ``totalAmount``, ``gpuAmount``, ``cpuAmount``,
  ``diskAmount`` and ``feeAmount`` ("Serverless platform fee"), US dollars per endpoint per bucket;
  ``metadata`` has ``query`` (``startTime``, ``endTime``, ``bucketSize``, ``serverlessId``),
  ``recordCount``, ``uniqueServerlessCount`` and ``totals`` (the same five amounts). A bare list
  of such records is read too.
- ``runpod-v1``: RunPod REST v1 ``GET https://rest.runpod.io/v1/billing/endpoints``
  (``EndpointBilling``; https://docs.runpod.io/api-reference/billing/GET/billing/endpoints, spec
  ``api-reference/openapi.json``). An array of ``BillingRecord``: ``time`` ("The start of the
  period"), ``amount`` (USD), ``timeBilledMs``, ``diskSpaceBilledGb``, and, "according to
  grouping", ``endpointId``, ``podId`` or ``gpuTypeId``. The only shape with billed time; it has no
  end per record (the bucket follows ``time``) and no parts.
- ``modal-json`` and ``modal-csv``: ``modal billing report --json`` / ``--csv``
  (https://modal.com/docs/cli/latest/billing; ``py/modal/cli/billing.py`` of
  github.com/modal-labs/modal-client): columns ``Object ID``, ``Description``, ``Environment``,
  ``Interval Start``, with ``--show-resources`` ``Resource``, then ``Cost``, with ``--tag-names``
  ``Tags`` (the tags as a JSON object in a string). JSON keys are the column names in snake case
  (``object_id``, ``interval_start``, ...). Interval starts are ISO date-times, UTC unless they
  carry an offset (``--tz``); with ``--show-resources`` an object's interval is one row per
  resource.
- ``modal-items``: ``modal.Workspace.billing.report()``'s ``BillingReportItem``
  (``py/modal/types.py``) written out as JSON objects: ``object_id``, ``description``,
  ``environment_name``, ``interval_start``, ``cost``, ``cost_by_resource`` (resource -> cost)
  and ``tags``.

Modal's report names an object (an App: ``ap-...``, its name in ``description``) per interval of an
hour or a day (``resolution`` ``h`` or ``d``); its resources are "CPU, Memory, specific GPU types,
etc." and "subject to change", so they are sorted into parts by name (:func:`resource_part`).
Amounts are read as the decimals they were written as (exact :class:`~fractions.Fraction`), never
through binary floats.
"""

from __future__ import annotations

import calendar
import csv
import dataclasses
import datetime as dt
import decimal
import io
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Final

from gpuledger._errors import GpuledgerError

__all__ = [
    "BUCKETS",
    "PARTS",
    "PLATFORMS",
    "SHAPES",
    "Invoice",
    "InvoiceLine",
    "UsageFileError",
    "bucket_end",
    "parse_usage",
    "read_usage",
    "resource_part",
]

PLATFORMS: Final = ("runpod", "modal")
SHAPES: Final = {
    "runpod-v2": "RunPod GET /v2/billing/serverless",
    "runpod-v1": "RunPod GET /v1/billing/endpoints",
    "modal-json": "modal billing report --json",
    "modal-csv": "modal billing report --csv",
    "modal-items": "modal.Workspace.billing.report() items",
}
"""Shape name -> where it comes from."""
PARTS: Final = ("gpu", "cpu", "memory", "disk", "fee", "other")
"""What an invoiced amount can be itemised into."""
BUCKETS: Final = ("hour", "day", "week", "month", "year")
"""Bucket sizes (RunPod's ``bucketSize``; Modal's ``resolution`` is ``h`` or ``d``)."""

_NS: Final = 1_000_000_000
_FIXED_NS: Final = {"hour": 3600 * _NS, "day": 86_400 * _NS, "week": 7 * 86_400 * _NS}
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_GPU_WORDS = re.compile(
    r"gpu|h100|h200|h20|a100|a10|a10g|l40|l4\b|t4\b|b200|b300|rtx|mi300|v100", re.IGNORECASE
)


class UsageFileError(GpuledgerError, ValueError):
    """A usage or billing export that cannot be read: ``path`` and why."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"usage file {path}: {reason}")


@dataclasses.dataclass(frozen=True, slots=True)
class InvoiceLine:
    """One amount the platform billed: a period, what it was for, and what it cost.

    ``endpoint`` is the platform's id of what was billed (RunPod's ``serverlessId`` /
    ``endpointId``, Modal's ``object_id``); None where the export is grouped otherwise (RunPod v1
    by ``podId`` or ``gpuTypeId``). ``parts`` itemises ``amount_usd`` (keys from :data:`PARTS`,
    summing to it) where the export does; None where it gives only the total.
    """

    platform: str
    period_start_ns: int
    period_end_ns: int
    amount_usd: Fraction
    endpoint: str | None = None
    name: str | None = None
    """Modal's ``description``: the App's name."""
    parts: Mapping[str, Fraction] | None = None
    billed_ms: int | None = None
    """RunPod v1 ``timeBilledMs``: the time billed in the period."""
    gpu_type: str | None = None
    worker: str | None = None
    """RunPod v1 ``podId`` (grouped by pod): the billing worker."""
    environment: str | None = None
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)
    disk_gb: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """What a ledger record's ``endpoint`` may call this line's object: its id or name."""
        return tuple(name for name in (self.endpoint, self.name) if name)


@dataclasses.dataclass(frozen=True, slots=True)
class Invoice:
    """A platform's usage export: its lines, and the bucket they are cut in."""

    platform: str
    shape: str
    """A key of :data:`SHAPES`."""
    bucket: str
    """One of :data:`BUCKETS`."""
    bucket_inferred: bool
    """The export does not say its bucket: it was inferred from the periods' spacing."""
    lines: tuple[InvoiceLine, ...]
    source: str
    declared_total_usd: Fraction | None = None
    """The total the export states (RunPod v2 ``metadata.totals.totalAmount``)."""
    query_start_ns: int | None = None
    query_end_ns: int | None = None
    """The window the export was asked for, where it says (RunPod v2 ``metadata.query``)."""

    @property
    def total_usd(self) -> Fraction:
        return sum((line.amount_usd for line in self.lines), Fraction(0))

    @property
    def start_ns(self) -> int:
        """The first instant the export covers."""
        starts = [line.period_start_ns for line in self.lines]
        if self.query_start_ns is not None:
            starts.append(self.query_start_ns)
        return min(starts)

    @property
    def end_ns(self) -> int:
        """The end (exclusive) of what the export covers."""
        ends = [line.period_end_ns for line in self.lines]
        if self.query_end_ns is not None:
            ends.append(self.query_end_ns)
        return max(ends)


def read_usage(
    path: str | Path, *, platform: str | None = None, bucket: str | None = None
) -> Invoice:
    """The :class:`Invoice` in the export at ``path``, its shape detected from its content.

    ``platform`` (``runpod`` or ``modal``), where given, must be the export's; ``bucket`` says the
    bucket of a shape that does not state it (RunPod v1, Modal), else it is inferred from the
    spacing of the periods (a single period: an hour unless it starts at midnight UTC, then a
    day, both platforms' default). Raises :class:`UsageFileError`.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as error:
        raise UsageFileError(str(path), error.strerror or str(error)) from None
    return parse_usage(text, source=str(path), platform=platform, bucket=bucket)


def parse_usage(
    text: str, *, source: str = "<text>", platform: str | None = None, bucket: str | None = None
) -> Invoice:
    """:func:`read_usage` of text already read."""
    if platform is not None and platform not in PLATFORMS:
        raise UsageFileError(source, f"no platform {platform!r}: choose {' or '.join(PLATFORMS)}")
    if bucket is not None and bucket not in BUCKETS:
        raise UsageFileError(source, f"no bucket {bucket!r}: choose one of {', '.join(BUCKETS)}")
    stripped = text.lstrip()
    if not stripped:
        raise UsageFileError(source, "empty")
    try:
        if stripped[0] in "[{":
            invoice = _parse_json(text, source, bucket)
        else:
            invoice = _parse_modal_csv(text, source, bucket)
    except UsageFileError:
        raise
    except (KeyError, TypeError, ValueError, decimal.InvalidOperation, ArithmeticError) as error:
        raise UsageFileError(source, f"not a billing export this version reads: {error}") from None
    if platform is not None and invoice.platform != platform:
        raise UsageFileError(
            source,
            f"is {SHAPES[invoice.shape]} ({invoice.platform}), not a {platform} export",
        )
    if not invoice.lines:
        raise UsageFileError(source, f"{SHAPES[invoice.shape]} with no records")
    return invoice


def resource_part(resource: str) -> str:
    """The part (:data:`PARTS`) a Modal resource name stands for: ``CPU`` -> ``cpu``, ``Memory``
    -> ``memory``, a GPU type (``H100``, ``GPU (A100-80GB)``) -> ``gpu``, storage -> ``disk``,
    anything else -> ``other``."""
    lowered = resource.lower()
    if "cpu" in lowered:
        return "cpu"
    if "mem" in lowered:
        return "memory"
    if _GPU_WORDS.search(resource):
        return "gpu"
    if any(word in lowered for word in ("disk", "storage", "volume")):
        return "disk"
    return "other"


def _decimal(value: object, field: str) -> Fraction:
    """An amount as the decimal it was written as."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{field} is {value!r}, not an amount")
    if isinstance(value, int | decimal.Decimal):
        return Fraction(value)
    if isinstance(value, float):  # a caller's float: its shortest decimal repr
        return Fraction(decimal.Decimal(repr(value)))
    if isinstance(value, str):
        return Fraction(decimal.Decimal(value.strip()))
    raise ValueError(f"{field} is {value!r}, not an amount")


def _instant(value: object, field: str) -> int:
    """An ISO date or date-time (UTC unless it says otherwise) as Unix nanoseconds."""
    if not isinstance(value, str):
        raise ValueError(f"{field} is {value!r}, not an ISO date-time")
    instant = dt.datetime.fromisoformat(value.strip())
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=dt.UTC)
    return (instant - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def bucket_end(start_ns: int, bucket: str) -> int:
    """The end (exclusive) of the bucket of size ``bucket`` that starts at ``start_ns``."""
    fixed = _FIXED_NS.get(bucket)
    if fixed is not None:
        return start_ns + fixed
    start = _EPOCH + dt.timedelta(microseconds=start_ns // 1000)
    if bucket == "month":
        days = calendar.monthrange(start.year, start.month)[1]
        end = start + dt.timedelta(days=days)
    else:
        end = start.replace(year=start.year + 1)
    return (end - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def _infer_bucket(starts: Iterable[int], given: str | None) -> tuple[str, bool]:
    """The bucket: ``given``, else from the smallest gap between distinct starts."""
    if given is not None:
        return given, False
    ordered = sorted(set(starts))
    gaps = [later - earlier for earlier, later in itertools.pairwise(ordered)]
    if not gaps:
        midnight = ordered[0] % _FIXED_NS["day"] == 0 if ordered else True
        return ("day" if midnight else "hour"), True
    gap = min(gaps)
    if gap < _FIXED_NS["day"]:
        return "hour", True
    if gap < _FIXED_NS["week"]:
        return "day", True
    if gap < 28 * _FIXED_NS["day"]:
        return "week", True
    if gap < 365 * _FIXED_NS["day"]:
        return "month", True
    return "year", True


def _parse_json(text: str, source: str, bucket: str | None) -> Invoice:
    data = json.loads(text, parse_float=decimal.Decimal)
    if isinstance(data, dict) and "records" in data:
        return _runpod_v2(data["records"], data.get("metadata") or {}, source, bucket)
    if isinstance(data, dict):
        raise UsageFileError(
            source, "a JSON object without 'records': not RunPod's /v2/billing/serverless"
        )
    if not isinstance(data, list):
        raise UsageFileError(source, "neither a JSON array nor an object")
    if not data:
        raise UsageFileError(source, "an empty JSON array: no records to reconcile")
    first = data[0]
    if not isinstance(first, dict):
        raise UsageFileError(source, f"its records are {type(first).__name__}s, not objects")
    if "serverlessId" in first:
        return _runpod_v2(data, {}, source, bucket)
    if "time" in first and "amount" in first:
        return _runpod_v1(data, source, bucket)
    if "object_id" in first:
        items = "cost_by_resource" in first or "environment_name" in first
        return _modal(data, "modal-items" if items else "modal-json", source, bucket)
    raise UsageFileError(
        source,
        f"records with keys {sorted(first)} are none of: {', '.join(SHAPES.values())}",
    )


def _runpod_v2(
    records: Sequence[Mapping[str, Any]],
    metadata: Mapping[str, Any],
    source: str,
    given: str | None,
) -> Invoice:
    query = metadata.get("query") or {}
    stated = query.get("bucketSize")
    if stated is not None and given is not None and stated != given:
        raise UsageFileError(source, f"its bucketSize is {stated!r}, not {given!r}")
    lines = []
    for index, record in enumerate(records):
        where = f"records[{index}]"
        parts = {
            part: _decimal(record.get(key, 0), f"{where}.{key}")
            for part, key in (
                ("gpu", "gpuAmount"),
                ("cpu", "cpuAmount"),
                ("disk", "diskAmount"),
                ("fee", "feeAmount"),
            )
        }
        total = _decimal(record["totalAmount"], f"{where}.totalAmount")
        rest = total - sum(parts.values(), Fraction(0))
        if rest:  # the documented example's total is the four parts' sum; keep any remainder
            parts["other"] = rest
        lines.append(
            InvoiceLine(
                platform="runpod",
                period_start_ns=_instant(record["startTime"], f"{where}.startTime"),
                period_end_ns=_instant(record["endTime"], f"{where}.endTime"),
                amount_usd=total,
                endpoint=str(record["serverlessId"]),
                parts=parts,
            )
        )
    if stated is None:
        stated = _infer_bucket((line.period_start_ns for line in lines), given)[0]
    totals = metadata.get("totals") or {}
    declared = totals.get("totalAmount")
    return Invoice(
        platform="runpod",
        shape="runpod-v2",
        bucket=str(stated),
        bucket_inferred="bucketSize" not in query and given is None,
        lines=tuple(lines),
        source=source,
        declared_total_usd=None if declared is None else _decimal(declared, "totals.totalAmount"),
        query_start_ns=_instant(query["startTime"], "query.startTime")
        if query.get("startTime")
        else None,
        query_end_ns=_instant(query["endTime"], "query.endTime") if query.get("endTime") else None,
    )


def _runpod_v1(records: Sequence[Mapping[str, Any]], source: str, given: str | None) -> Invoice:
    starts = [_instant(record["time"], f"[{index}].time") for index, record in enumerate(records)]
    bucket, inferred = _infer_bucket(starts, given)
    lines = []
    for index, (record, start) in enumerate(zip(records, starts, strict=True)):
        billed = record.get("timeBilledMs")
        disk = record.get("diskSpaceBilledGb")
        lines.append(
            InvoiceLine(
                platform="runpod",
                period_start_ns=start,
                period_end_ns=bucket_end(start, bucket),
                amount_usd=_decimal(record["amount"], f"[{index}].amount"),
                endpoint=record.get("endpointId") or None,
                billed_ms=None if billed is None else int(billed),
                gpu_type=record.get("gpuTypeId") or None,
                worker=record.get("podId") or None,
                disk_gb=None if disk is None else int(disk),
            )
        )
    return Invoice(
        platform="runpod",
        shape="runpod-v1",
        bucket=bucket,
        bucket_inferred=inferred,
        lines=tuple(lines),
        source=source,
    )


def _modal_rows(rows: Sequence[Mapping[str, Any]], items: bool) -> list[dict[str, Any]]:
    """Modal rows as items: one per object, environment and interval, costs by resource."""
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for index, row in enumerate(rows):
        where = f"[{index}]"
        environment = str(row.get("environment_name" if items else "environment") or "")
        key = (str(row["object_id"]), environment, str(row["interval_start"]))
        item = merged.get(key)
        tags = row.get("tags") or {}
        if isinstance(tags, str):  # the CLI writes tags as a JSON object in a string
            tags = json.loads(tags) if tags.strip() else {}
        if item is None:
            item = merged[key] = {
                "object_id": key[0],
                "description": row.get("description") or None,
                "environment": environment or None,
                "interval_start": key[2],
                "cost": Fraction(0),
                "resources": {} if (items or "resource" in row) else None,
                "tags": {str(k): str(v) for k, v in dict(tags).items()},
            }
        if items:
            item["cost"] += _decimal(row["cost"], f"{where}.cost")
            for resource, cost in dict(row.get("cost_by_resource") or {}).items():
                item["resources"][str(resource)] = _decimal(cost, f"{where}.cost_by_resource")
        else:
            cost = _decimal(row["cost"], f"{where}.cost")
            item["cost"] += cost
            if item["resources"] is not None:
                resource = str(row.get("resource") or "")
                item["resources"][resource] = item["resources"].get(resource, 0) + cost
    return list(merged.values())


def _modal(
    rows: Sequence[Mapping[str, Any]], shape: str, source: str, given: str | None
) -> Invoice:
    if given is not None and given not in ("hour", "day"):
        raise UsageFileError(source, f"Modal reports by hour or day, not by {given}")
    items = _modal_rows(rows, items=shape == "modal-items")
    starts = [_instant(item["interval_start"], "interval_start") for item in items]
    bucket, inferred = _infer_bucket(starts, given)
    lines = []
    for item, start in zip(items, starts, strict=True):
        resources: dict[str, Fraction] | None = item["resources"]
        parts: dict[str, Fraction] | None = None
        if resources:
            parts = {}
            for resource, cost in resources.items():
                part = resource_part(resource)
                parts[part] = parts.get(part, Fraction(0)) + cost
            rest = item["cost"] - sum(parts.values(), Fraction(0))
            if rest:
                parts["other"] = parts.get("other", Fraction(0)) + rest
        lines.append(
            InvoiceLine(
                platform="modal",
                period_start_ns=start,
                period_end_ns=bucket_end(start, bucket),
                amount_usd=item["cost"],
                endpoint=item["object_id"],
                name=item["description"],
                parts=parts,
                environment=item["environment"],
                tags=item["tags"],
            )
        )
    return Invoice(
        platform="modal",
        shape=shape,
        bucket=bucket,
        bucket_inferred=inferred,
        lines=tuple(lines),
        source=source,
    )


_CSV_COLUMNS: Final = {
    "Object ID": "object_id",
    "Description": "description",
    "Environment": "environment",
    "Interval Start": "interval_start",
    "Resource": "resource",
    "Cost": "cost",
    "Tags": "tags",
}


def _parse_modal_csv(text: str, source: str, bucket: str | None) -> Invoice:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    if not header or header[0] != "Object ID":
        raise UsageFileError(
            source,
            "not JSON, and not a CSV starting with Modal's 'Object ID' column: none of "
            + ", ".join(SHAPES.values()),
        )
    unknown = [column for column in header if column not in _CSV_COLUMNS]
    if unknown:
        raise UsageFileError(source, f"unknown column(s) {unknown} in a Modal billing CSV")
    keys = [_CSV_COLUMNS[column] for column in header]
    rows = [dict(zip(keys, row, strict=True)) for row in reader if row]
    if not rows:
        raise UsageFileError(source, "modal billing report --csv with no rows")
    return _modal(rows, "modal-csv", source, bucket)
