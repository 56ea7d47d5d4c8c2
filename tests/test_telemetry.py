"""OpenTelemetry output: span attributes, metrics, user ids, providers, OTLP and console."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv.schemas import Schemas

import gpuledger
from gpuledger import ConfigError
from gpuledger._record import InvocationRecord
from gpuledger.exporters import SCHEMA_URL, InvocationMetrics

from .conftest import Telemetry, run_python
from .support.processes import free_port


def _serve(clock: Any, seconds: float = 20.0) -> Any:
    @gpuledger.traced_handler(name="generate", user=lambda job: job["input"].get("user"))
    def generate(job: dict[str, Any]) -> str:
        clock.advance(seconds)
        gpuledger.record_tokens(input=10, output=50)
        return "text"

    return generate


def test_span_carries_cost_and_its_parts(telemetry: Telemetry) -> None:
    """A warm 20 s request on RunPod H100 is priced at RunPod's published rate, 20 x $0.00116 =
    $0.0232, no per-request fee (published-2026-12, the default edition)."""
    serve = _serve(telemetry.clock)
    serve({"id": "cold", "input": {}})
    serve({"id": "warm", "input": {"user": "bob"}})
    cold, warm = telemetry.spans("generate")
    assert warm.attributes["faas.invocation_id"] == "warm"
    assert warm.attributes["gpuledger.cost.total"] == pytest.approx(0.0232)
    assert warm.attributes["gpuledger.cost.execution"] == pytest.approx(0.0)
    assert warm.attributes["gpuledger.cost.gpu"] == pytest.approx(0.0232)
    assert warm.attributes["gpuledger.gpu.billed"] == pytest.approx(20.0)
    assert warm.attributes["faas.trigger"] == "pubsub"
    # The cold one also pays the 5 s process init, which RunPod bills.
    assert cold.attributes["gpuledger.cost.coldstart"] == pytest.approx(5 * 0.00116)
    assert cold.attributes["gpuledger.init.duration"] == pytest.approx(5.0)
    assert cold.attributes["gpuledger.idle_gap"] == pytest.approx(0.0)
    rows = telemetry.rows()
    assert rows[1]["cost_usd"] == pytest.approx(0.0232)
    assert rows[0]["cost_usd"] == pytest.approx(0.0232 + 5 * 0.00116)
    assert rows[0]["pricing_version"] == "published-2026-12"


@pytest.mark.pricing("seed-2026-03")
def test_the_seed_edition_prices_the_seed_s_way(telemetry: Telemetry) -> None:
    """Under the seed's edition the same request is the article's $0.25 + 20 x $0.00024."""
    serve = _serve(telemetry.clock)
    serve({"id": "cold", "input": {}})
    serve({"id": "warm", "input": {"user": "bob"}})
    _cold, warm = telemetry.spans("generate")
    assert warm.attributes["gpuledger.cost.total"] == pytest.approx(0.2548)
    assert warm.attributes["gpuledger.cost.execution"] == pytest.approx(0.25)
    assert telemetry.rows()[1]["pricing_version"] == "seed-2026-03"


def test_gpu_count_multiplies_billed_seconds(telemetry: Telemetry) -> None:
    """Billed GPU seconds are wall time x GPUs held."""
    gpuledger.configure(
        ledger=str(telemetry.ledger_path),
        platform="modal",
        gpu="H100",
        gpu_count=4,
        clock=telemetry.clock,
        exporters="none",
    )
    _serve(telemetry.clock, seconds=15.0)({"id": "x", "input": {}})
    (row,) = telemetry.rows()
    assert row["billed_gpu_seconds"] == pytest.approx(60.0)
    assert row["gpu_count"] == 4
    assert row["busy_gpu_seconds"] is None  # unknown until NVML measures it, never 0
    assert row["energy_j"] is None


def test_unknown_gpu_gives_null_cost_never_a_made_up_one(telemetry: Telemetry) -> None:
    """A GPU the catalogue does not price: cost is null, and the record says why."""
    gpuledger.configure(
        ledger=str(telemetry.ledger_path),
        platform="runpod",
        gpu="T4",
        clock=telemetry.clock,
        exporters="none",
    )
    _serve(telemetry.clock)({"id": "x", "input": {}})
    (row,) = telemetry.rows()
    assert row["cost_usd"] is None
    assert "no runpod price for GPU 'T4'" in row["cost_source"]


def test_metrics_are_recorded_without_user_ids_by_default(telemetry: Telemetry) -> None:
    """The FaaS and gpuledger metrics are recorded, and user ids stay off their attributes."""
    serve = _serve(telemetry.clock)
    serve({"id": "1", "input": {"user": "alice"}})
    serve({"id": "2", "input": {"user": "bob"}})
    (invocations,) = telemetry.metric_points("faas.invocations")
    assert invocations.value == 2
    assert "enduser.id" not in invocations.attributes
    assert telemetry.metric_points("faas.coldstarts")[0].value == 1
    assert telemetry.metric_points("gpuledger.gpu.billed")[0].value == pytest.approx(40.0)
    costs = {
        point.attributes["gpuledger.cost.category"]: point.value
        for point in telemetry.metric_points("gpuledger.cost")
    }
    assert costs == pytest.approx({"request": 40 * 0.00116, "startup": 5 * 0.00116})
    (duration,) = telemetry.metric_points("faas.invoke_duration")
    assert duration.count == 2 and duration.sum == pytest.approx(40.0)
    (init,) = telemetry.metric_points("faas.init_duration")
    assert init.sum == pytest.approx(5.0)
    assert telemetry.metric_points("faas.errors") == []


def test_faas_invocations_counts_the_successful_ones_only(telemetry: Telemetry) -> None:
    """As the FaaS conventions define it, ``faas.invocations`` is the number of successful
    invocations; a failed one is in ``faas.errors``; the duration histogram has every one."""

    @gpuledger.traced_handler(name="generate")
    def handler(job: dict[str, Any]) -> str:
        telemetry.clock.advance(1.0)
        if job["input"].get("fail"):
            raise ValueError("bad prompt")
        return "text"

    handler({"id": "1", "input": {}})
    with pytest.raises(ValueError, match="bad prompt"):
        handler({"id": "2", "input": {"fail": True}})
    handler({"id": "3", "input": {}})
    (invocations,) = telemetry.metric_points("faas.invocations")
    assert invocations.value == 2
    (errors,) = telemetry.metric_points("faas.errors")
    assert errors.value == 1
    assert telemetry.metric_points("faas.invoke_duration")[0].count == 3
    assert telemetry.metric_points("faas.timeouts") == []


def _record(outcome: str, **fields: Any) -> InvocationRecord:
    return InvocationRecord(
        record_id=f"r-{outcome}",
        invocation_id=outcome,
        handler="generate",
        service_name="svc",
        platform="runpod",
        start_ns=0,
        end_ns=1_000_000_000,
        duration_s=1.0,
        outcome=outcome,  # type: ignore[arg-type]
        billed_gpu_seconds=1.0,
        **fields,
    )


def _metrics(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: (metric, scope_metrics.scope)
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    }


def _total(metric: Any) -> float:
    return sum(point.value for point in metric.data.data_points)


def test_each_invocation_is_counted_by_one_faas_counter() -> None:
    """ok -> ``faas.invocations``; error, cancelled, killed -> ``faas.errors``; timeout ->
    ``faas.timeouts``: the three add up to the invocations the duration histogram saw."""
    reader = InMemoryMetricReader()
    metrics = InvocationMetrics(
        MeterProvider(metric_readers=[reader]),
        trigger="http",
        user_attributes=False,
        telemetry_errors=dict,
        pending=lambda: 0,
    )
    outcomes = ["ok", "ok", "error", "cancelled", "killed", "timeout"]
    metrics.record([_record(outcome) for outcome in outcomes])
    got = _metrics(reader)
    assert _total(got["faas.invocations"][0]) == 2
    assert _total(got["faas.errors"][0]) == 3
    assert _total(got["faas.timeouts"][0]) == 1
    (duration,) = got["faas.invoke_duration"][0].data.data_points
    assert duration.count == len(outcomes)


def _kind(instrument: Any) -> tuple[str, bool | None]:
    """What an instrument exports as: ``(data type, monotonic)``."""
    from opentelemetry.metrics import (
        Counter,
        Histogram,
        ObservableCounter,
        ObservableGauge,
        ObservableUpDownCounter,
        UpDownCounter,
    )

    if isinstance(instrument, Counter | ObservableCounter):
        return "Sum", True
    if isinstance(instrument, UpDownCounter | ObservableUpDownCounter):
        return "Sum", False
    if isinstance(instrument, Histogram):
        return "Histogram", None
    assert isinstance(instrument, ObservableGauge), instrument
    return "Gauge", None


def test_instruments_are_the_conventions_own_and_ours_carry_their_unit() -> None:
    """Each instrument the conventions define has their name, unit and kind (compared with the
    conventions' own ``create_*`` helpers); ours carry their unit in ``unit``, cost as the
    annotation ``{USD}``; the meter carries the conventions' schema URL."""
    from opentelemetry.semconv._incubating.metrics import faas_metrics, hw_metrics

    reader = InMemoryMetricReader()
    device = types.SimpleNamespace(uuid="GPU-1", index=0, name="NVIDIA H100 80GB HBM3")
    reading = {
        "device": device,
        "utilization": 0.5,
        "memory": (2**30, 80 * 2**30),
        "power_w": 300.0,
        "energy_j": 1000.0,
    }
    metrics = InvocationMetrics(
        MeterProvider(metric_readers=[reader]),
        trigger="http",
        user_attributes=False,
        telemetry_errors=lambda: {"dashboard": 1},
        pending=lambda: 0,
        gpu_readings=lambda: [reading],
    )
    metrics.record(
        [
            _record(
                "ok",
                cold=True,
                init_duration_s=2.0,
                busy_gpu_seconds=0.5,
                energy_j=10.0,
                cost_usd=0.25,
                external_targets={"db": {"calls": 1, "wait_s": 0.1}},
            ),
            _record("error"),
            _record("timeout"),
        ]
    )
    metrics.record_flush_wait(0.001)
    got = _metrics(reader)
    probe = MeterProvider().get_meter("probe")
    conventions = [
        faas_metrics.create_faas_invocations(probe),
        faas_metrics.create_faas_errors(probe),
        faas_metrics.create_faas_timeouts(probe),
        faas_metrics.create_faas_coldstarts(probe),
        faas_metrics.create_faas_invoke_duration(probe),
        faas_metrics.create_faas_init_duration(probe),
        hw_metrics.create_hw_gpu_utilization(probe, []),
        hw_metrics.create_hw_gpu_memory_usage(probe),
        hw_metrics.create_hw_gpu_memory_limit(probe),
        hw_metrics.create_hw_power(probe, []),
        hw_metrics.create_hw_energy(probe),
    ]
    for instrument in conventions:
        metric, scope = got[instrument.name]
        exported = (type(metric.data).__name__, getattr(metric.data, "is_monotonic", None))
        assert (metric.unit, exported) == (instrument.unit, _kind(instrument)), instrument.name
        assert scope.schema_url == SCHEMA_URL
    ours = {
        "gpuledger.gpu.billed": "s",
        "gpuledger.gpu.busy": "s",
        "gpuledger.gpu.energy": "J",
        "gpuledger.cost": "{USD}",
        "gpuledger.external.calls": "{call}",
        "gpuledger.external.wait": "s",
        "gpuledger.flush.wait": "s",
        "gpuledger.telemetry.errors": "{error}",
        "gpuledger.ledger.pending": "{invocation}",
    }
    assert {name: got[name][0].unit for name in ours} == ours
    assert set(got) == {instrument.name for instrument in conventions} | set(ours)
    hw_attributes = dict(got["hw.gpu.utilization"][0].data.data_points[0].attributes)
    assert hw_attributes == {
        "hw.id": "GPU-1",
        "hw.type": "gpu",
        "hw.name": "GPU 0",
        "hw.model": "NVIDIA H100 80GB HBM3",
        "hw.vendor": "NVIDIA",
    }


def test_tracer_meter_and_resources_carry_the_schema_url() -> None:
    """gpuledger's tracer and meter, the resource it builds for its own providers, and the
    sidecar's spans rebuilt from records name the conventions' schema URL."""
    from gpuledger.exporters import gpuledger_meter, gpuledger_tracer
    from gpuledger.exporters._providers import _resource
    from gpuledger.exporters._records import record_resource, record_to_span

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gpuledger_tracer(provider).start_span("probe").end()
    (span,) = exporter.get_finished_spans()
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "gpuledger"
    assert span.instrumentation_scope.schema_url == SCHEMA_URL
    reader = InMemoryMetricReader()
    gpuledger_meter(MeterProvider(metric_readers=[reader])).create_counter("probe").add(1)
    (scope,) = {scope for _, scope in _metrics(reader).values()}
    assert scope.schema_url == SCHEMA_URL
    assert _resource({"service.name": "svc"}).schema_url == SCHEMA_URL
    record = _record("ok")
    rebuilt = record_to_span(record, record_resource(record))
    assert rebuilt.resource.schema_url == SCHEMA_URL
    assert rebuilt.instrumentation_scope is not None
    assert rebuilt.instrumentation_scope.schema_url == SCHEMA_URL
    assert Schemas.V1_44_0.value == SCHEMA_URL


def test_user_ids_on_metrics_when_opted_in(telemetry: Telemetry) -> None:
    """user_id_on_metrics puts enduser.id on the metric attributes."""
    reader = InMemoryMetricReader()
    gpuledger.configure(
        ledger=str(telemetry.ledger_path),
        platform="runpod",
        gpu="H100",
        clock=telemetry.clock,
        meter_provider=MeterProvider(metric_readers=[reader]),
        tracing=False,
        user_id_on_metrics=True,
    )
    _serve(telemetry.clock)({"id": "1", "input": {"user": "alice"}})
    gpuledger.flush(5)
    data = reader.get_metrics_data()
    users = {
        point.attributes.get("enduser.id")
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "faas.invocations"
        for point in metric.data.data_points
    }
    assert users == {"alice"}


def test_pseudonymised_user_ids(telemetry: Telemetry) -> None:
    """With a key, the span and ledger carry a stable keyed hash, never the id itself."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gpuledger.configure(
        ledger=str(telemetry.ledger_path),
        platform="runpod",
        gpu="H100",
        clock=telemetry.clock,
        tracer_provider=provider,
        metrics=False,
        pseudonym_key="k1",
    )
    serve = _serve(telemetry.clock)
    serve({"id": "1", "input": {"user": "alice@example.com"}})
    serve({"id": "2", "input": {"user": "alice@example.com"}})
    rows = telemetry.rows()
    assert rows[0]["user_id"] == rows[1]["user_id"] != "alice@example.com"
    assert rows[0]["user_id_pseudonymised"] == 1
    spans = [span for span in exporter.get_finished_spans() if span.name == "generate"]
    assert len(spans) == 2
    assert {span.attributes["enduser.pseudo.id"] for span in spans} == {rows[0]["user_id"]}
    assert all("enduser.id" not in span.attributes for span in spans)
    assert "alice" not in telemetry.ledger_path.read_bytes().decode("latin-1")


def test_no_exporter_means_no_spans_but_the_ledger(tmp_path: Path) -> None:
    """With no exporter and no application provider, no span is made; the ledger still is."""
    agent = gpuledger.configure(ledger=str(tmp_path / "l.db"), exporters="none")
    assert agent.tracer is None and agent.metrics is None

    @gpuledger.traced_handler
    def handler() -> None:
        return None

    handler()
    gpuledger.flush(5)
    assert (tmp_path / "l.db").exists()


@pytest.fixture
def app_providers() -> Iterator[tuple[InMemorySpanExporter, TracerProvider, MeterProvider]]:
    """The application sets global OTel providers first; restored after the test."""
    from opentelemetry.metrics import _internal as metrics_internal
    from opentelemetry.util._once import Once

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    yield exporter, tracer_provider, meter_provider
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
    metrics_internal._METER_PROVIDER_SET_ONCE = Once()
    metrics_internal._METER_PROVIDER = None


def test_application_providers_are_used_never_replaced(
    app_providers: tuple[InMemorySpanExporter, TracerProvider, MeterProvider], tmp_path: Path
) -> None:
    """Global providers the app set are used as they are, even when an exporter is asked for."""
    exporter, tracer_provider, meter_provider = app_providers
    agent = gpuledger.configure(ledger=str(tmp_path / "l.db"), exporters="console")
    assert trace.get_tracer_provider() is tracer_provider
    assert metrics.get_meter_provider() is meter_provider
    assert agent.providers.origin == "application"
    assert not agent.providers.owns_tracer_provider

    @gpuledger.traced_handler(name="app-handler")
    def handler() -> None:
        return None

    handler()
    gpuledger.shutdown()
    assert [span.name for span in exporter.get_finished_spans()] == ["init", "app-handler"]


class _OTLPReceiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.mark.slow
def test_otlp_export_when_an_endpoint_is_set(tmp_path: Path) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT alone makes a fresh process export spans and metrics via OTLP."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    _OTLPReceiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OTLPReceiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        script = tmp_path / "worker.py"
        script.write_text(
            textwrap.dedent("""
            import gpuledger

            @gpuledger.traced_handler
            def handler(job):
                gpuledger.tag(user=job["input"]["user"])
                return "ok"

            handler({"id": "otlp-job", "input": {"user": "carol"}})
        """)
        )
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
            "OTEL_SERVICE_NAME": "otlp-test",
            "GPULEDGER_LEDGER": str(tmp_path / "l.db"),
            "GPULEDGER_PLATFORM": "runpod",
            "GPULEDGER_GPU": "H100",
        }
        run_python(script, env)
    finally:
        server.shutdown()
        server.server_close()
    paths = {path for path, _ in _OTLPReceiver.received}
    assert {"/v1/traces", "/v1/metrics"} <= paths
    spans = []
    for path, body in _OTLPReceiver.received:
        if path == "/v1/traces":
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            for resource_spans in request.resource_spans:
                resource = {
                    kv.key: kv.value.string_value for kv in resource_spans.resource.attributes
                }
                assert resource["service.name"] == "otlp-test"
                assert resource["cloud.platform"] == "runpod_serverless"
                for scope in resource_spans.scope_spans:
                    spans.extend(scope.spans)
    handler_span = next(span for span in spans if span.name == "handler")
    attributes = {kv.key: kv.value for kv in handler_span.attributes}
    assert attributes["faas.invocation_id"].string_value == "otlp-job"
    assert attributes["enduser.id"].string_value == "carol"
    assert attributes["faas.coldstart"].bool_value is True


@pytest.mark.slow
def test_console_exporter_prints_spans(tmp_path: Path) -> None:
    """GPULEDGER_EXPORTERS=console prints the spans as JSON on standard output."""
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent("""
        import gpuledger

        @gpuledger.traced_handler
        def handler(job):
            return "ok"

        handler({"id": "console-job", "input": {}})
    """)
    )
    env = {
        "GPULEDGER_EXPORTERS": "console",
        "GPULEDGER_LEDGER": str(tmp_path / "l.db"),
    }
    completed = run_python(script, env)
    decoder = json.JSONDecoder()
    text, spans, index = completed.stdout, [], 0
    while (start := text.find("{", index)) != -1:
        document, index = decoder.raw_decode(text, start)
        if "span_id" in json.dumps(document) and "name" in document:
            spans.append(document)
    handler_span = next(span for span in spans if span["name"] == "handler")
    assert handler_span["attributes"]["faas.invocation_id"] == "console-job"
    assert handler_span["kind"] == "SpanKind.SERVER"


@pytest.mark.slow
def test_reconfiguring_keeps_exporting(tmp_path: Path) -> None:
    """A second configure() reuses the global providers gpuledger built: spans keep flowing."""
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent("""
        import gpuledger

        @gpuledger.traced_handler
        def handler(job):
            return "ok"

        gpuledger.configure(exporters="console", service_name="first")
        handler({"id": "before", "input": {}})
        gpuledger.configure(exporters="console", service_name="second")
        handler({"id": "after", "input": {}})
    """)
    )
    env = {"GPULEDGER_LEDGER": str(tmp_path / "l.db")}
    completed = run_python(script, env)
    assert '"faas.invocation_id": "before"' in completed.stdout
    assert '"faas.invocation_id": "after"' in completed.stdout


@pytest.mark.parametrize(
    ("protocol", "module"),
    [
        ("grpc", "opentelemetry.exporter.otlp.proto.grpc"),
        (None, "opentelemetry.exporter.otlp.proto.http"),
    ],
)
def test_otlp_protocol_and_timeout(
    monkeypatch: pytest.MonkeyPatch, protocol: str | None, module: str
) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL picks the transport (http/protobuf by default); the export
    timeout is gpuledger's flush timeout unless OTEL_EXPORTER_OTLP_TIMEOUT says otherwise."""
    from gpuledger.exporters._providers import _otlp_exporter, _timeout

    if protocol:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    assert type(_otlp_exporter("TRACES", 2.5)).__module__.startswith(module)
    assert type(_otlp_exporter("METRICS", 2.5)).__module__.startswith(module)
    assert _timeout("TRACES", 2.5) == 2.5
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "7000")
    assert _timeout("TRACES", 2.5) == 2.5
    assert _timeout("METRICS", 2.5) is None  # the exporter reads the variable itself


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"), ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grcp")],
)
def test_an_otlp_protocol_no_exporter_speaks_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """The worker and the sidecar parse OTEL_EXPORTER_OTLP_*PROTOCOL with one function and
    refuse alike; the worker used to export over http/protobuf without a word."""
    from gpuledger.sidecar._server import resolve_otlp

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=f"environment variable {variable}"):
        gpuledger.traced_handler(lambda: None)  # checked at decoration: the deploy fails
    with pytest.raises(ConfigError, match=f"environment variable {variable}"):
        gpuledger.configure(exporters="otlp")
    if variable == "OTEL_EXPORTER_OTLP_PROTOCOL":  # the sidecar exports spans: TRACES' protocol
        import os

        with pytest.raises(ConfigError, match=f"environment variable {variable}"):
            resolve_otlp(None, None, dict(os.environ))


@pytest.mark.pricing("seed-2026-03")  # rounding per busy span: the seed's idle is not billed
def test_the_cost_counter_adds_up_to_the_worker_bill(telemetry: Telemetry) -> None:
    """The cost counter grows by category as each charge becomes known: fees, request time and
    the start-up with each request, the rounding of a billing span when the next request starts
    after it, the last span's at the stop. Summed, it is the worker's bill (issue 13)."""
    from fractions import Fraction

    from gpuledger.billing import bill, workers_of

    serve = _serve(telemetry.clock, seconds=0.3)
    serve({"id": "a", "input": {}})
    telemetry.clock.advance(10.0)
    serve({"id": "b", "input": {}})

    def by_category() -> dict[str, float]:
        sums: dict[str, float] = {}
        for point in telemetry.metric_points("gpuledger.cost"):
            category = point.attributes["gpuledger.cost.category"]
            sums[category] = sums.get(category, 0.0) + point.value
        return sums

    rate = 0.00024
    before = by_category()
    # The first span (5 s init + 0.3 s, -> 6 s) closed when b started 10 s later; b's is open.
    assert before["rounding"] == pytest.approx(0.7 * rate)
    records = telemetry.records()
    gpuledger.shutdown()
    after = by_category()
    assert after["rounding"] == pytest.approx(1.4 * rate)  # b's span, 0.3 s -> 1 s, at the stop
    assert after["fee"] == pytest.approx(0.5)
    assert after["startup"] == pytest.approx(5 * rate)
    assert after["request"] == pytest.approx(0.6 * rate)
    (worker,) = workers_of(records)
    expected = bill(worker.timeline, worker.rules)  # type: ignore[arg-type]
    assert sum(after.values()) == pytest.approx(float(expected.total_usd), rel=1e-9)
    assert expected.by_category()["rounding"] == Fraction("1.4") * Fraction("0.00024")


def test_flush_never_duplicates_a_prometheus_scrape(tmp_path: Path) -> None:
    """``gpuledger.flush()`` (and ``shutdown()``) must not force-flush the Prometheus pull
    reader: it queues each collection for the next scrape, which then showed every series two
    or three times. A push reader beside it (console) is still flushed."""
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent("""
        import sys, urllib.request
        import gpuledger

        @gpuledger.traced_handler
        def handler(job):
            return "ok"

        for index in range(3):
            handler({"id": f"job-{index}", "input": {}})
        gpuledger.flush()
        gpuledger.flush()
        port = sys.argv[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            sys.stderr.write(response.read().decode())
    """)
    )
    port = free_port()
    env = {
        "GPULEDGER_EXPORTERS": "prometheus,console",
        "GPULEDGER_PROMETHEUS_PORT": str(port),
        "GPULEDGER_LEDGER": str(tmp_path / "l.db"),
    }
    completed = subprocess.run(
        [sys.executable, str(script), str(port)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    samples = [line for line in completed.stderr.splitlines() if line and not line.startswith("#")]
    invocations = [line for line in samples if line.startswith("faas_invocations_total{")]
    assert len(invocations) == 1, invocations
    assert invocations[0].endswith(" 3.0")
    assert len(samples) == len(set(samples)), "a series appears more than once"
    assert "faas.invocations" in completed.stdout  # the console (push) reader was flushed
