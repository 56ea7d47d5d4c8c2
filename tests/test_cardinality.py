"""Metric cardinality is bounded: a flood of distinct attribute values cannot grow the metrics
without limit (issue 15 measured 20,000 handler names -> 20,000 series, RSS 43 -> 211 MB).

Past ``ATTRIBUTE_VALUE_LIMIT`` distinct values of one attribute, new values are recorded as
``OVERFLOW_VALUE``; the invocations are all still counted.
"""

from __future__ import annotations

import gc
import os
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gpuledger._record import InvocationRecord
from gpuledger.exporters import _metrics as metrics_module
from gpuledger.exporters._metrics import (
    ATTRIBUTE_VALUE_LIMIT,
    OVERFLOW_VALUE,
    InvocationMetrics,
)

DISTINCT = 20_000


def _rss_mb() -> float:
    """This process's resident memory now, in MB (``/proc``)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _record(index: int, **fields: Any) -> InvocationRecord:
    return InvocationRecord(
        record_id=f"r-{index}",
        invocation_id=f"i-{index}",
        handler=f"handler-{index}",
        service_name="svc",
        platform="runpod",
        start_ns=0,
        end_ns=1_000_000_000,
        duration_s=1.0,
        outcome="ok",
        billed_gpu_seconds=1.0,
        **fields,
    )


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: list(metric.data.data_points)
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    }


class Warnings:
    """Stands in for the agent's logger: keeps the warnings."""

    def __init__(self) -> None:
        self.said: list[tuple[str, dict[str, Any]]] = []

    def warning(self, message: str, **fields: Any) -> None:
        self.said.append((message, fields))


def test_distinct_handler_names_past_the_limit_share_one_series(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """20,000 handler names (and as many users, opted in): at most limit + 1 series per
    instrument, every invocation counted, the overflow said once per attribute in the log."""
    log = Warnings()
    monkeypatch.setattr(metrics_module, "get_logger", lambda: log)
    gc.collect()
    before = _rss_mb()
    reader = InMemoryMetricReader()
    metrics = InvocationMetrics(
        MeterProvider(metric_readers=[reader]),
        trigger="http",
        user_attributes=True,
        telemetry_errors=dict,
        pending=lambda: 0,
    )
    for start in range(0, DISTINCT, 1000):  # batches, as the writer hands them over
        metrics.record(
            [
                _record(index, user_id=f"user-{index}", external_targets={f"t{index}": {}})
                for index in range(start, start + 1000)
            ]
        )
    points = _points(reader)
    gc.collect()
    after = _rss_mb()
    print(f"\n{DISTINCT} handler names: RSS {before:.0f} -> {after:.0f} MB")

    for name in ("faas.invocations", "faas.invoke_duration", "gpuledger.gpu.billed"):
        series = points[name]
        assert len(series) <= ATTRIBUTE_VALUE_LIMIT + 1, (name, len(series))
        handlers = {point.attributes["gpuledger.handler"] for point in series}
        assert OVERFLOW_VALUE in handlers
    assert sum(point.value for point in points["faas.invocations"]) == DISTINCT
    assert len(points["gpuledger.external.calls"]) <= ATTRIBUTE_VALUE_LIMIT + 1
    assert sorted(fields["attribute"] for _, fields in log.said) == [
        "enduser.id",
        "gpuledger.external.target",
        "gpuledger.handler",
    ]
    assert all("cardinality limit" in message for message, _ in log.said)


def test_values_under_the_limit_are_kept() -> None:
    """Below the limit every value is its own series."""
    reader = InMemoryMetricReader()
    metrics = InvocationMetrics(
        MeterProvider(metric_readers=[reader]),
        trigger="http",
        user_attributes=False,
        telemetry_errors=dict,
        pending=lambda: 0,
    )
    metrics.record([_record(index) for index in range(10)])
    metrics.record([_record(index) for index in range(10)])
    handlers = {p.attributes["gpuledger.handler"] for p in _points(reader)["faas.invocations"]}
    assert handlers == {f"handler-{index}" for index in range(10)}
