"""Capture what gpuledger produces in a test: ledger records, spans and metric points.

The OpenTelemetry SDK (a dependency of gpuledger) and ``sqlite3`` are imported when a capture
starts or reads, never at import, so that the pytest plugin costs nothing in test runs that do
not use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuledger import _config
from gpuledger._record import InvocationRecord
from gpuledger.testing._clock import FakeClock

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

__all__ = ["FLUSH_TIMEOUT_S", "Capture", "capture_telemetry"]

FLUSH_TIMEOUT_S = 5.0
"""Longest each read waits for gpuledger to write and export what is finished, seconds."""


@dataclasses.dataclass
class Capture:
    """What a configured gpuledger produced: ledger records and rows, spans, metric points.

    Each read first flushes gpuledger (waiting at most :data:`FLUSH_TIMEOUT_S`), so it sees
    every invocation that finished before it. Made by :func:`capture_telemetry` (or the
    ``gpuledger_capture`` pytest fixture), which configures gpuledger to write here.
    """

    clock: FakeClock
    """The clock gpuledger reads: ``clock.advance(seconds)`` moves time on."""
    ledger_path: Path
    """The SQLite ledger gpuledger writes; made by its first batch."""
    span_exporter: InMemorySpanExporter
    metric_reader: InMemoryMetricReader

    def records(self) -> list[InvocationRecord]:
        """The finished invocations, oldest first, read back from the ledger."""
        self._flush_or_fail()
        if not self.ledger_path.exists():
            return []  # the writer makes the ledger with its first batch
        from gpuledger.ledger import open_ledger  # noqa: PLC0415  (sqlite3: on use)

        with open_ledger(str(self.ledger_path), create=False) as ledger:
            return list(ledger.read())

    def rows(self) -> list[dict[str, Any]]:
        """The ledger's rows as stored, oldest first: one dict per row, column -> value (dicts
        are JSON text, booleans 0 or 1)."""
        self._flush_or_fail()
        if not self.ledger_path.exists():
            return []
        import sqlite3  # noqa: PLC0415  (on use)

        with contextlib.closing(sqlite3.connect(self.ledger_path)) as connection:
            connection.row_factory = sqlite3.Row
            query = "SELECT * FROM invocations ORDER BY start_ns, rowid"
            return [dict(row) for row in connection.execute(query)]

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """The finished spans, in the order they ended; only those called ``name`` if given."""
        _config.flush(FLUSH_TIMEOUT_S)
        spans = self.span_exporter.get_finished_spans()
        return [span for span in spans if name is None or span.name == name]

    def metric_points(self, name: str) -> list[Any]:
        """The data points of the metric called ``name`` (all its attribute sets), as the SDK
        collects them now: cumulative sums and histograms since the capture started."""
        _config.flush(FLUSH_TIMEOUT_S)
        data = self.metric_reader.get_metrics_data()
        points: list[Any] = []
        for resource_metrics in data.resource_metrics if data else []:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points

    def _flush_or_fail(self) -> None:
        if not _config.flush(FLUSH_TIMEOUT_S):
            raise AssertionError(f"gpuledger did not flush within {FLUSH_TIMEOUT_S:g} s")


@contextlib.contextmanager
def capture_telemetry(
    ledger: str | os.PathLike[str] | None = None,
    *,
    clock: FakeClock | None = None,
    **settings: Any,
) -> Iterator[Capture]:
    """Configure gpuledger to write into a :class:`Capture` for the ``with`` block, then forget
    it: every process-wide state of gpuledger is reset on the way in and on the way out.

    gpuledger is configured with an in-memory span exporter and metric reader, the SQLite
    ledger ``ledger`` (default: ``ledger.db`` in a temporary folder removed at the end), the
    ``clock`` (default: a new :class:`FakeClock`), ``gpu_metering="off"`` (no NVML: the same
    on any machine; pass ``nvml=`` a :class:`gpuledger.testing.nvml.ReplayNvml` and
    ``gpu_metering="auto"`` to meter a recording) and ``strict=True`` (gpuledger's own
    failures raise instead of being contained and logged). ``settings`` are passed to
    :func:`gpuledger.configure` and win over these; settings you do not pass come from the
    environment as usual (the pytest fixture hides ``GPULEDGER_*`` and ``OTEL_*``).

    Example::

        with capture_telemetry(service_name="demo") as capture:
            handler({"id": "job-1"})
            (record,) = capture.records()
            assert record.outcome == "ok"
    """
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415  (the SDK: on use)
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: PLC0415
        InMemorySpanExporter,
    )

    with contextlib.ExitStack() as stack:
        if ledger is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="gpuledger-"))
            ledger = Path(folder, "ledger.db")
        span_exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider(shutdown_on_exit=False)
        tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
        metric_reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[metric_reader], shutdown_on_exit=False)
        stack.callback(_shut_down, tracer_provider, meter_provider)
        capture = Capture(clock or FakeClock(), Path(ledger), span_exporter, metric_reader)
        _config.reset_for_tests()
        stack.callback(_config.reset_for_tests)  # runs before the providers shut down
        _config.configure(
            **{
                "ledger": str(capture.ledger_path),
                "tracer_provider": tracer_provider,
                "meter_provider": meter_provider,
                "clock": capture.clock,
                "gpu_metering": "off",
                "strict": True,
                **settings,
            }
        )
        yield capture


def _shut_down(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> None:
    tracer_provider.shutdown()
    meter_provider.shutdown()
