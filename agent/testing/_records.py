"""Invocation records with sane defaults, for tests of code that reads records."""

from __future__ import annotations

import math
import uuid
from typing import Any, Final

from gpuledger._record import InvocationRecord

__all__ = ["RECORDS_START_NS", "make_record"]

RECORDS_START_NS: Final = 1_772_323_200 * 10**9
"""Where :func:`make_record`'s offsets count from: 2026-03-01T00:00:00Z, Unix nanoseconds."""


def make_record(offset_s: float = 0.0, duration_s: float = 1.0, **fields: Any) -> InvocationRecord:
    """A finished invocation record: one request of ``duration_s`` seconds that started
    ``offset_s`` seconds after :data:`RECORDS_START_NS`, with the fields you name set.

    The rest is a warm, successful request of handler ``predict`` in service ``svc`` on
    ``runpod``, with a new ``record_id``, the ``invocation_id`` ``"job-<offset_s>"``, and
    ``billed_gpu_seconds`` of ``duration_s`` x ``gpu_count``; every other field keeps the
    record's default (``None``: unknown). ``start_ns=`` places the request at an instant instead
    of an offset; ``end_ns`` follows from the start and ``duration_s`` unless given. A field the
    record does not have raises TypeError. A ``duration_s`` that is not a number (NaN: what a
    broken clock gives) leaves ``end_ns`` at the start and ``billed_gpu_seconds`` at 0.

    Example::

        from gpuledger.testing import make_record

        records = [make_record(0, user_id="alice", cost_usd=0.02), make_record(60, 2.5)]
        assert records[1].end_ns - records[1].start_ns == 2_500_000_000
    """
    start_ns = fields.pop("start_ns", RECORDS_START_NS + round(offset_s * 1e9))
    gpu_count = fields.get("gpu_count", 1)
    measured = math.isfinite(duration_s)
    values: dict[str, Any] = {
        "record_id": uuid.uuid4().hex,
        "invocation_id": f"job-{offset_s:.9g}",
        "handler": "predict",
        "service_name": "svc",
        "platform": "runpod",
        "start_ns": start_ns,
        "end_ns": start_ns + (round(duration_s * 1e9) if measured else 0),
        "duration_s": duration_s,
        "billed_gpu_seconds": duration_s * gpu_count if measured else 0.0,
    }
    values.update(fields)
    return InvocationRecord(**values)
