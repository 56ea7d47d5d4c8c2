"""The invocation's span is recorded by the writer; the request path draws only its identity.

What a user of OpenTelemetry relies on must hold all the same, on a real SDK provider with
in-memory exporters: the span the exporter gets has the ids the handler saw as its current
span; spans started inside the handler are its children; an incoming parent is honoured; the
provider's sampler decides, once, and its decision reaches children; what the handler does to
the current span (attributes, events, status, name) is on the exported span; every processor's
``on_start`` sees the span, with the parent context. A tracer that is not the SDK's keeps the
span started on the request path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry import context, trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

import gpuledger
from gpuledger.exporters._deferred import DeferredSpan, DeferredTracing


class _Starts(SpanProcessor):
    """Remembers each span's name and parent context at ``on_start``."""

    def __init__(self) -> None:
        self.started: list[tuple[str, Any]] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started.append((span.name, parent_context))


@pytest.fixture
def traced(tmp_path: Path) -> tuple[InMemorySpanExporter, _Starts, TracerProvider]:
    exporter, starts = InMemorySpanExporter(), _Starts()
    provider = TracerProvider()
    provider.add_span_processor(starts)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gpuledger.configure(
        ledger=str(tmp_path / "ledger.db"),
        platform="runpod",
        gpu="H100",
        tracer_provider=provider,
        metrics=False,
        gpu_metering="off",
    )
    return exporter, starts, provider


def _spans(exporter: InMemorySpanExporter, name: str) -> list[Any]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def test_the_exported_span_is_the_one_the_handler_saw_and_children_hang_off_it(
    traced: tuple[InMemorySpanExporter, _Starts, TracerProvider],
) -> None:
    exporter, starts, provider = traced
    tracer = provider.get_tracer("app")
    seen: list[SpanContext] = []
    started_before: list[int] = []

    @gpuledger.traced_handler(name="generate")
    def handler(job: dict[str, Any]) -> str:
        current = trace.get_current_span()
        seen.append(current.get_span_context())
        started_before.append([name for name, _ in starts.started].count("generate"))
        with tracer.start_as_current_span("tokenize"):
            pass
        with gpuledger.external_call("s3.get", target="s3://weights"):
            pass
        return "ok"

    for index in range(3):
        assert handler({"id": f"j{index}", "input": {}}) == "ok"
    assert gpuledger.flush(10)
    generated = _spans(exporter, "generate")
    assert len(generated) == 3
    warm = generated[1:]  # the first, cold, is started on the request path (its init link)
    assert [span.context for span in warm] == seen[1:]
    for span in warm:
        assert span.kind is SpanKind.SERVER
        assert span.context.trace_flags.sampled
        assert span.start_time < span.end_time
        assert span.attributes["faas.coldstart"] is False
        assert span.attributes["gpuledger.cost.total"] > 0  # the record's attributes, as before
    children = {span.parent.span_id for span in _spans(exporter, "tokenize")}
    children |= {span.parent.span_id for span in _spans(exporter, "s3.get")}
    assert children == {span.context.span_id for span in generated}
    assert [name for name, _ in starts.started].count("generate") == 3
    # A warm invocation's span is started by the writer, not while its handler runs.
    assert started_before[0] == 1
    assert all(count <= index for index, count in enumerate(started_before) if index)


def test_what_the_handler_does_to_its_span_is_on_the_exported_span(
    traced: tuple[InMemorySpanExporter, _Starts, TracerProvider],
) -> None:
    exporter, _, _ = traced

    @gpuledger.traced_handler(name="generate")
    def handler(job: dict[str, Any]) -> str:
        span = trace.get_current_span()
        assert span.is_recording()
        span.set_attribute("app.model", "llama-3")
        span.set_attributes({"app.batch": 4})
        span.add_event("first-token", {"app.position": 1})
        span.update_name("generate llama-3")
        span.set_status(trace.Status(StatusCode.ERROR, "refused by the model"))
        span.end()  # the agent's to end: ignored
        return "ok"

    handler({"id": "cold", "input": {}})
    handler({"id": "warm", "input": {}})
    assert gpuledger.flush(10)
    renamed = _spans(exporter, "generate llama-3")
    assert len(renamed) == 2
    for span in renamed:
        assert span.attributes["app.model"] == "llama-3"
        assert span.attributes["app.batch"] == 4
        (event,) = span.events
        assert event.name == "first-token" and span.start_time <= event.timestamp <= span.end_time
        assert span.status.status_code is StatusCode.ERROR


def test_an_incoming_parent_is_the_span_s_parent(
    traced: tuple[InMemorySpanExporter, _Starts, TracerProvider],
) -> None:
    exporter, starts, _ = traced
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )

    @gpuledger.traced_handler(name="generate")
    def handler(job: dict[str, Any]) -> str:
        return "ok"

    handler({"id": "cold", "input": {}})
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(remote)))
    try:
        handler({"id": "warm", "input": {}})
    finally:
        context.detach(token)
    assert gpuledger.flush(10)
    warm = _spans(exporter, "generate")[1]
    assert warm.context.trace_id == remote.trace_id
    assert warm.parent is not None and warm.parent.span_id == remote.span_id
    parent_context = [parent for name, parent in starts.started if name == "generate"][1]
    assert trace.get_current_span(parent_context).get_span_context() == remote


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, ParentBased(TraceIdRatioBased(0.5))])
def test_the_provider_s_sampler_decides_once_for_the_span_and_its_children(
    tmp_path: Path, sampler: Any
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    gpuledger.configure(ledger=str(tmp_path / "ledger.db"), tracer_provider=provider, metrics=False)
    tracer = provider.get_tracer("app")
    seen: list[tuple[SpanContext, bool]] = []

    @gpuledger.traced_handler(name="generate")
    def handler() -> None:
        span = trace.get_current_span()
        seen.append((span.get_span_context(), span.is_recording()))
        with tracer.start_as_current_span("child"):
            pass

    for _ in range(200):
        handler()
    assert gpuledger.flush(10)
    exported = {span.context.span_id for span in _spans(exporter, "generate")}
    sampled = {ctx.span_id for ctx, _ in seen if ctx.trace_flags.sampled}
    assert exported == sampled
    assert all(recording == ctx.trace_flags.sampled for ctx, recording in seen)
    assert {span.parent.span_id for span in _spans(exporter, "child")} <= sampled
    assert len(_spans(exporter, "child")) == len(sampled)
    if sampler is ALWAYS_OFF:
        assert not exported
    else:
        assert 40 < len(exported) < 160  # about half: the ratio sampler decided


def test_a_tracer_that_is_not_the_sdk_s_keeps_the_span_on_the_request_path() -> None:
    assert not DeferredTracing.usable(trace.NoOpTracer())
    assert DeferredTracing.usable(TracerProvider().get_tracer("x"))


def test_a_deferred_span_that_is_not_recorded_keeps_nothing() -> None:
    tracing = DeferredTracing(TracerProvider(sampler=ALWAYS_OFF).get_tracer("x"))  # type: ignore[arg-type]
    span = tracing.start("h", SpanKind.SERVER, {}, 1)
    assert isinstance(span, DeferredSpan)
    span.set_attribute("a", 1)
    assert not span.is_recording() and span._ops is None
    assert tracing.record(span) is None
