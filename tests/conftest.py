"""Shared fixtures: a clean gpuledger per test, a controllable clock, in-memory telemetry."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import gpuledger
from gpuledger import _config, _guard

# Servers the tests start on 127.0.0.1: PostgreSQL, Redis, S3, OTLP receivers, model servers.
pytest_plugins = ["tests.services", "tests.receivers", "tests.upstreams"]

EPOCH_NS = 1_764_000_000 * 10**9  # a fixed wall-clock instant, 2025-11-24


class FakeClock:
    """Wall and monotonic time that move only when told; the process "started" 5 s before."""

    def __init__(self, start_ns: int = EPOCH_NS, process_age_s: float = 5.0) -> None:
        self.wall_ns = start_ns
        self.perf_ns = 10**12
        self.process_start = start_ns - int(process_age_s * 1e9)

    def time_ns(self) -> int:
        return self.wall_ns

    def perf_counter_ns(self) -> int:
        return self.perf_ns

    def process_start_ns(self) -> int:
        return self.process_start

    def advance(self, seconds: float) -> None:
        step = round(seconds * 1e9)
        self.wall_ns += step
        self.perf_ns += step


@dataclasses.dataclass
class Telemetry:
    """What a configured gpuledger produced: spans, metrics and ledger rows."""

    clock: FakeClock
    ledger_path: Path
    span_exporter: InMemorySpanExporter
    metric_reader: InMemoryMetricReader

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        gpuledger.flush(5)
        spans = list(self.span_exporter.get_finished_spans())
        return [span for span in spans if name is None or span.name == name]

    def rows(self) -> list[dict[str, Any]]:
        assert gpuledger.flush(5), "flush timed out"
        if not self.ledger_path.exists():
            return []  # the writer opens the ledger with its first batch
        connection = sqlite3.connect(self.ledger_path)
        connection.row_factory = sqlite3.Row
        try:
            return [
                dict(row)
                for row in connection.execute("SELECT * FROM invocations ORDER BY start_ns, rowid")
            ]
        finally:
            connection.close()

    def metric_points(self, name: str) -> list[Any]:
        gpuledger.flush(5)
        data = self.metric_reader.get_metrics_data()
        points: list[Any] = []
        for resource_metrics in data.resource_metrics if data else []:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


def run_python(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter with ``env`` added to ours; fail on a bad exit."""
    completed = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed


@pytest.fixture(autouse=True)
def clean_gpuledger(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test starts with no agent, no gpuledger/OTel environment, and its own directory."""
    for name in list(os.environ):
        if name.startswith(("GPULEDGER_", "OTEL_", "RUNPOD_", "MODAL_", "COG_", "REPLICATE_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    _config.reset_for_tests()
    yield
    _config.reset_for_tests()


@pytest.fixture
def clock() -> FakeClock:
    """A controllable clock."""
    return FakeClock()


@pytest.fixture
def telemetry(tmp_path: Path, clock: FakeClock) -> Telemetry:
    """gpuledger configured on RunPod/H100 with in-memory span and metric exporters."""
    span_exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    metric_reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[metric_reader])
    ledger_path = tmp_path / "ledger.db"
    gpuledger.configure(
        ledger=str(ledger_path),
        platform="runpod",
        gpu="H100",
        service_name="test-service",
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        clock=clock,
        strict=True,
        # Deterministic on any machine: GPU tests replay recorded NVML (tests/test_gpu*.py).
        gpu_metering="off",
    )
    return Telemetry(clock, ledger_path, span_exporter, metric_reader)


@pytest.fixture
def no_internal_errors() -> Iterator[None]:
    """Fail the test if gpuledger counted any internal failure."""
    yield
    assert _guard.error_counts() == {}
