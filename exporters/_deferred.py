"""Invocation spans recorded by the writer: the request path makes only the span's identity.

An invocation's SERVER span used to be started on the request path (``Tracer.start_span``: the
sampler, two ids, a ``_Span`` with its attribute containers and lock, every processor's
``on_start``) and ended by the writer from the record. Now the request path does what the SDK's
``start_span`` does up to the span context, with the provider's own sampler and id generator,
and puts a :class:`DeferredSpan` in the context: it carries that context, so every child (an
outgoing call, a phase, an instrumentation's span) is parented to it exactly as before, and it
keeps what the handler does to the current span (attributes, events, status, a new name) for
later. The writer then starts the real span with a copy of gpuledger's tracer whose sampler and
id generator give back what the request path drew (:class:`DeferredTracing`), at the
invocation's own start time and under the same parent context, replays the handler's
operations, and ends it from the record as before: the span every processor and exporter sees
is the one the request path would have made, ids, sampling, trace state and all, and its
``on_start`` runs in the writer instead of the request.

Only with the SDK's tracer (``opentelemetry.sdk.trace.Tracer``, enabled); with another
provider's tracer (a vendor's), the agent starts the span on the request path as before. A cold
invocation, whose span links to the init span, also starts its span at once (one a process).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

__all__ = ["DeferredSpan", "DeferredTracing"]

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_RANDOM = TraceFlags.RANDOM_TRACE_ID


class DeferredSpan(trace.Span):
    """The current span while a handler runs: its context is final, its recording is the
    writer's. What the handler does to it is kept in order and replayed on the real span;
    ``end`` is the agent's (the writer ends it at the invocation's end)."""

    __slots__ = (
        "_attributes",
        "_context",
        "_kind",
        "_name",
        "_ops",
        "_parent",
        "_sampling",
        "_start_ns",
    )

    def __init__(
        self,
        name: str,
        span_context: SpanContext,
        parent: context_api.Context,
        kind: SpanKind,
        attributes: dict[str, Any],
        start_ns: int,
        sampling: Any,
    ) -> None:
        self._name = name
        self._context = span_context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._start_ns = start_ns
        self._sampling = sampling
        self._ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]] | None = None

    def _keep(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._sampling.decision.is_recording():
            return  # as a non-recording span: nothing is kept
        if self._ops is None:
            self._ops = []
        self._ops.append((name, args, kwargs))

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return bool(self._sampling.decision.is_recording())

    def set_attributes(self, attributes: Any) -> None:
        self._keep("set_attributes", (dict(attributes),), {})

    def set_attribute(self, key: str, value: Any) -> None:
        self._keep("set_attribute", (key, value), {})

    def add_event(self, name: str, attributes: Any = None, timestamp: int | None = None) -> None:
        # Timestamped now, as the SDK's span would: the replay is later.
        self._keep("add_event", (name, attributes, timestamp or time.time_ns()), {})

    def add_link(self, context: SpanContext, attributes: Any = None) -> None:
        self._keep("add_link", (context, attributes), {})

    def update_name(self, name: str) -> None:
        self._keep("update_name", (name,), {})

    def set_status(self, status: Any, description: str | None = None) -> None:
        self._keep("set_status", (status, description), {})

    def record_exception(
        self,
        exception: BaseException,
        attributes: Any = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self._keep(
            "record_exception", (exception, attributes, timestamp or time.time_ns(), escaped), {}
        )

    def end(self, end_time: int | None = None) -> None:
        """Ignored: the invocation's span ends when the agent records the invocation."""

    def __repr__(self) -> str:
        return f'DeferredSpan(name="{self._name}", context={self._context})'


class DeferredTracing:
    """Deferred spans for one SDK tracer: :meth:`start` on the request path, :meth:`record`
    in the writer."""

    def __init__(self, tracer: SdkTracer) -> None:
        self._tracer = tracer
        self._sampler: Any = tracer.sampler
        self._ids: Any = tracer.id_generator
        recorder = copy.copy(tracer)
        recorder.sampler = self  # type: ignore[assignment]
        recorder.id_generator = self  # type: ignore[assignment]
        self._recorder = recorder
        self._lock = threading.Lock()
        self._pending: DeferredSpan | None = None

    @staticmethod
    def usable(tracer: Any) -> bool:
        """Whether ``tracer`` is the SDK's and enabled (the only tracer whose spans can be
        made with given ids)."""
        if not isinstance(tracer, SdkTracer):
            return False
        enabled = getattr(tracer, "_is_enabled", None)
        return bool(enabled is None or enabled())

    def start(
        self, name: str, kind: SpanKind, attributes: dict[str, Any], start_ns: int
    ) -> DeferredSpan:
        """What ``Tracer.start_span`` decides, up to the span's context: trace id (the
        parent's, or a new one), the sampler's result, the flags, a new span id."""
        parent_context = context_api.get_current()
        parent = trace.get_current_span(parent_context).get_span_context()
        ids = self._ids
        if parent.is_valid:
            trace_id = parent.trace_id
            random_trace_id = parent.trace_flags.random_trace_id
        else:
            trace_id = ids.generate_trace_id()
            random_trace_id = ids.is_trace_id_random()
        sampling = self._sampler.should_sample(parent_context, trace_id, name, kind, attributes, ())
        flags = _SAMPLED if sampling.decision.is_sampled() else _NOT_SAMPLED
        if random_trace_id:
            flags = TraceFlags(flags | _RANDOM)
        span_context = SpanContext(
            trace_id,
            ids.generate_span_id(),
            is_remote=False,
            trace_flags=flags,
            trace_state=sampling.trace_state,
        )
        return DeferredSpan(
            name, span_context, parent_context, kind, attributes, start_ns, sampling
        )

    def record(self, span: DeferredSpan) -> Any:
        """The real span of ``span`` (None when it is not recorded: the sampler dropped it),
        started at its start time with its ids and sampling, the handler's operations
        replayed on it; the caller sets the record's attributes and ends it."""
        if not span._sampling.decision.is_recording():
            return None
        with self._lock:
            self._pending = span
            try:
                real = self._recorder.start_span(
                    span._name,
                    context=span._parent,
                    kind=span._kind,
                    attributes=span._attributes,
                    start_time=span._start_ns,
                    record_exception=False,
                    set_status_on_exception=False,
                )
            finally:
                self._pending = None
        for name, args, kwargs in span._ops or ():
            getattr(real, name)(*args, **kwargs)
        return real

    # -- the recorder's sampler and id generator: what the request path drew -----------------

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Sequence[Any] | None = None,
        trace_state: Any = None,
    ) -> Any:
        assert self._pending is not None
        return self._pending._sampling

    def get_description(self) -> str:
        return f"gpuledger.deferred({self._sampler.get_description()})"

    def generate_trace_id(self) -> int:
        assert self._pending is not None
        return self._pending._context.trace_id

    def generate_span_id(self) -> int:
        assert self._pending is not None
        return self._pending._context.span_id

    def is_trace_id_random(self) -> bool:
        assert self._pending is not None
        return self._pending._context.trace_flags.random_trace_id
