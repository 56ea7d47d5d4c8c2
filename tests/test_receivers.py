"""What real OpenTelemetry receivers got: rotel (its debug output) and Datadog's test agent.

The spans and metrics are made with the OpenTelemetry SDK, then handed to the SDK's OTLP exporters
(HTTP and gRPC) by hand, so that each test knows exactly what was sent; the assertions are on what
the receiver shows it received. The exporters' return values are kept for the record only.
The last tests run a gpuledger worker in a fresh process, configured by environment variables
alone, as docs/datadog.md describes.
"""

from __future__ import annotations

import textwrap
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from .conftest import run_python
from .support.processes import free_port

if TYPE_CHECKING:  # imported for real by pytest_plugins, which must load it first
    from .support.receivers import DDAgent, ReceivedMetric, ReceivedSpan, Rotel


pytestmark = pytest.mark.slow

PROTOCOLS = ["http", "grpc"]


def _make_spans(tag: str) -> Sequence[ReadableSpan]:
    """A server span ``job-<tag>`` with a child ``load-<tag>``, finished, not yet exported."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"svc-{tag}", "gpuledger.gpu.count": 2})
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.receivers")
    attributes = {
        "faas.invocation_id": f"inv-{tag}",
        "gpuledger.gpu.billed_seconds": 1.5,
        "faas.coldstart": True,
        "gen_ai.usage.output_tokens": 42,
        "gpuledger.gpu.uuids": ["GPU-a", "GPU-b"],
    }
    with (
        tracer.start_as_current_span(f"job-{tag}", kind=SpanKind.SERVER, attributes=attributes),
        tracer.start_as_current_span(f"load-{tag}", attributes={"gpuledger.phase": "load"}),
    ):
        pass
    spans = memory.get_finished_spans()
    provider.shutdown()
    return spans


def _make_metrics(tag: str) -> Any:
    """One collection holding the counter ``gpuledger.test.<tag>`` = 3 {handler=h}."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        resource=Resource.create({"service.name": f"svc-{tag}"}), metric_readers=[reader]
    )
    counter = provider.get_meter("tests.receivers").create_counter(
        f"gpuledger.test.{tag}", unit="{invocation}"
    )
    counter.add(3, {"gpuledger.handler": "h"})
    data = reader.get_metrics_data()
    provider.shutdown()
    return data


def _exporters(protocol: str, http_endpoint: str, grpc_endpoint: str, timeout: float) -> Any:
    """The SDK's OTLP span and metric exporters for ``protocol``."""
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return (
            OTLPSpanExporter(endpoint=f"{http_endpoint}/v1/traces", timeout=timeout),
            OTLPMetricExporter(endpoint=f"{http_endpoint}/v1/metrics", timeout=timeout),
        )
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
        OTLPMetricExporter as GrpcMetricExporter,
    )
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
        OTLPSpanExporter as GrpcSpanExporter,
    )

    return (
        GrpcSpanExporter(endpoint=grpc_endpoint, insecure=True, timeout=timeout),
        GrpcMetricExporter(endpoint=grpc_endpoint, insecure=True, timeout=timeout),
    )


def _send(protocol: str, receiver: Rotel, tag: str) -> tuple[Any, Any]:
    """Export ``_make_spans(tag)`` and ``_make_metrics(tag)`` to ``receiver``; the results."""
    span_exporter, metric_exporter = _exporters(
        protocol, receiver.http_endpoint, receiver.grpc_endpoint, timeout=5
    )
    try:
        return span_exporter.export(_make_spans(tag)), metric_exporter.export(_make_metrics(tag))
    finally:
        span_exporter.shutdown()
        metric_exporter.shutdown()


def _check_spans(job: ReceivedSpan, load: ReceivedSpan, tag: str) -> None:
    assert job.kind == "SPAN_KIND_SERVER"
    assert job.parent_id == ""
    assert load.parent_id == job.span_id
    assert load.trace_id == job.trace_id
    assert len(job.trace_id) == 32
    assert job.attributes == {
        "faas.invocation_id": f"inv-{tag}",
        "gpuledger.gpu.billed_seconds": 1.5,
        "faas.coldstart": True,
        "gen_ai.usage.output_tokens": 42,
        "gpuledger.gpu.uuids": ["GPU-a", "GPU-b"],
    }
    assert load.attributes == {"gpuledger.phase": "load"}
    assert job.resource["service.name"] == f"svc-{tag}"
    assert job.resource["gpuledger.gpu.count"] == 2
    assert job.scope == "tests.receivers"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rotel_prints_what_it_received(rotel: Rotel, protocol: str) -> None:
    """Two spans and a counter sent over OTLP/HTTP or OTLP/gRPC show up in rotel's debug output
    with their names, ids, attributes (typed) and resource."""
    tag = f"{protocol}-{uuid.uuid4().hex[:8]}"
    span_result, metric_result = _send(protocol, rotel, tag)

    (job,) = rotel.wait_for_spans(1, name=f"job-{tag}")
    (load,) = rotel.wait_for_spans(1, name=f"load-{tag}")
    _check_spans(job, load, tag)
    (metric,) = rotel.wait_for_metric(f"gpuledger.test.{tag}")
    assert metric.data_type == "Sum"
    assert metric.monotonic is True
    assert metric.unit == "{invocation}"
    assert [(p.attributes, p.value) for p in metric.points] == [({"gpuledger.handler": "h"}, 3)]
    assert metric.resource["service.name"] == f"svc-{tag}"
    # For the record: the exporters said they succeeded, and the receiver agrees.
    assert (span_result, metric_result) == (SpanExportResult.SUCCESS, MetricExportResult.SUCCESS)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_rotel_forwards_to_the_datadog_test_agent(
    rotel_to_ddagent: Rotel, ddagent: DDAgent, protocol: str
) -> None:
    """rotel receives OTLP over HTTP or gRPC and its OTLP exporter hands it on to Datadog's test
    agent, which got the same spans (same ids), attributes and counter."""
    tag = f"fwd-{protocol}-{uuid.uuid4().hex[:8]}"
    _send(protocol, rotel_to_ddagent, tag)

    (job,) = ddagent.wait_for_spans(1, name=f"job-{tag}")
    (load,) = ddagent.wait_for_spans(1, name=f"load-{tag}")
    _check_spans(job, load, tag)
    (seen_by_rotel,) = rotel_to_ddagent.spans(f"job-{tag}")
    assert (seen_by_rotel.trace_id, seen_by_rotel.span_id) == (job.trace_id, job.span_id)
    (metric,) = ddagent.wait_for_metric(f"gpuledger.test.{tag}")
    assert metric.data_type == "Sum"
    assert metric.temporality == "AGGREGATION_TEMPORALITY_CUMULATIVE"
    assert [(p.attributes, p.value) for p in metric.points] == [({"gpuledger.handler": "h"}, 3)]


def test_datadog_test_agent_session(ddagent: DDAgent) -> None:
    """``clear()`` starts a new session: what came before is no longer shown; the raw
    ``traces()`` are ExportTraceServiceRequests as JSON."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=f"{ddagent.otlp_http_endpoint}/v1/traces", timeout=5)
    try:
        tag = uuid.uuid4().hex[:8]
        exporter.export(_make_spans(f"before-{tag}"))
        ddagent.wait_for_spans(1, name=f"job-before-{tag}")
        ddagent.clear()
        assert ddagent.spans(f"job-before-{tag}") == []
        exporter.export(_make_spans(f"after-{tag}"))
        ddagent.wait_for_spans(1, name=f"job-after-{tag}")
    finally:
        exporter.shutdown()
    names = [
        span["name"]
        for request in ddagent.traces()
        for resource_spans in request["resource_spans"]
        for scope_spans in resource_spans["scope_spans"]
        for span in scope_spans["spans"]
    ]
    assert sorted(names) == [f"job-after-{tag}", f"load-after-{tag}"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_exporter_to_a_closed_port_delivers_nothing(rotel: Rotel, protocol: str) -> None:
    """Spans exported to a port where nothing listens reach no receiver: rotel, sent a marker
    afterwards, shows the marker and not them. The exporter reports FAILURE within its 1 s
    timeout (it retries until then); the HTTP one of opentelemetry 1.35-1.39 raises requests'
    ConnectionError instead, which gpuledger's callers contain (the sidecar's outage tests run on
    those versions too, in .ci/run's lowest-versions pass)."""
    tag = f"lost-{protocol}-{uuid.uuid4().hex[:8]}"
    closed = free_port()
    span_exporter, metric_exporter = _exporters(
        protocol, f"http://127.0.0.1:{closed}", f"127.0.0.1:{closed}", timeout=1
    )
    started = time.monotonic()
    try:
        result = span_exporter.export(_make_spans(tag))
    except requests.exceptions.ConnectionError:
        assert protocol == "http"
        result = SpanExportResult.FAILURE
    finally:
        span_exporter.shutdown()
        metric_exporter.shutdown()
    assert result is SpanExportResult.FAILURE
    assert time.monotonic() - started < 10

    marker = f"marker-{protocol}-{uuid.uuid4().hex[:8]}"
    _send(protocol, rotel, marker)
    rotel.wait_for_spans(1, name=f"job-{marker}")
    assert rotel.spans(f"job-{tag}") == []
    assert rotel.spans(f"load-{tag}") == []


# --- gpuledger itself, configured by environment variables only --------------------------------

_WORKER = textwrap.dedent("""
    import gpuledger

    @gpuledger.traced_handler
    def handler(job):
        gpuledger.tag(user=job["input"]["user"])
        return "ok"

    handler({"id": "dd-job-1", "input": {"user": "carol"}})
    handler({"id": "dd-job-2", "input": {"user": "dave"}})
""")


def _run_worker(tmp_path: Path, service: str, env: dict[str, str]) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    run_python(
        script,
        {
            "OTEL_SERVICE_NAME": service,
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test,service.version=1.2.3",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
            "GPULEDGER_LEDGER": str(tmp_path / "ledger.db"),
            "GPULEDGER_PLATFORM": "runpod",
            "GPULEDGER_GPU": "H100",
            "GPULEDGER_GPU_METERING": "off",
            **env,
        },
    )


def _check_gpuledger_telemetry(ddagent: DDAgent, service: str) -> None:
    """Both invocations' spans, and the metrics, reached the test agent with gpuledger's names."""

    def ours(item: ReceivedSpan | ReceivedMetric) -> bool:
        return item.resource.get("service.name") == service

    spans = ddagent.wait_for_spans(2, name="handler", where=ours)
    assert sorted(span.attributes["faas.invocation_id"] for span in spans) == [
        "dd-job-1",
        "dd-job-2",
    ]
    first = next(span for span in spans if span.attributes["faas.invocation_id"] == "dd-job-1")
    assert first.kind == "SPAN_KIND_SERVER"
    assert first.attributes["faas.coldstart"] is True
    assert first.attributes["enduser.id"] == "carol"
    assert first.attributes["gpuledger.gpu.billed"] > 0
    assert first.attributes["gpuledger.cost.total"] > 0.0  # RunPod's GPU time
    resource = first.resource
    assert resource["cloud.platform"] == "runpod_serverless"
    assert resource["gpuledger.platform"] == "runpod"
    assert resource["gpuledger.gpu.model"] == "H100"
    assert resource["deployment.environment.name"] == "test"
    assert resource["service.version"] == "1.2.3"

    def total(name: str, field: str = "value") -> float:
        exports = ddagent.wait_for_metric(name, where=ours)
        # OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta reached the exporter.
        assert {m.temporality for m in exports} == {"AGGREGATION_TEMPORALITY_DELTA"}
        return sum(getattr(point, field) for m in exports for point in m.points)

    assert total("faas.invocations") == 2
    assert total("faas.coldstarts") == 1
    assert total("faas.invoke_duration", "count") == 2
    assert total("gpuledger.gpu.billed") > 0
    assert total("gpuledger.cost") > 0.0  # the GPU time of the two requests
    (invocations, *_) = ddagent.metric_exports("faas.invocations")
    assert invocations.points[0].attributes["gpuledger.handler"] == "handler"
    assert invocations.unit == "{invocation}"
    (cost, *_) = ddagent.metric_exports("gpuledger.cost")
    assert cost.unit == "{USD}"


def test_gpuledger_to_the_datadog_agent_otlp_intake(ddagent: DDAgent, tmp_path: Path) -> None:
    """docs/datadog.md, route (a): OTEL_EXPORTER_OTLP_ENDPOINT at the agent's OTLP/HTTP intake
    (Datadog's test agent standing in for the Datadog Agent) is all a worker needs."""
    service = f"gpuledger-dd-{uuid.uuid4().hex[:8]}"
    _run_worker(tmp_path, service, {"OTEL_EXPORTER_OTLP_ENDPOINT": ddagent.otlp_http_endpoint})
    _check_gpuledger_telemetry(ddagent, service)


def test_gpuledger_through_a_collector_to_the_datadog_agent(
    rotel_to_ddagent: Rotel, ddagent: DDAgent, tmp_path: Path
) -> None:
    """docs/datadog.md, route (b)'s shape: a worker exports OTLP/gRPC to a collector (rotel),
    which forwards to the Datadog side (the test agent); everything arrives unchanged."""
    service = f"gpuledger-dd-grpc-{uuid.uuid4().hex[:8]}"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{rotel_to_ddagent.grpc_endpoint}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    _run_worker(tmp_path, service, env)
    _check_gpuledger_telemetry(ddagent, service)
    assert len(rotel_to_ddagent.spans("handler")) >= 2
