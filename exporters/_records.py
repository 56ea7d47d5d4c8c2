"""Finished invocation records as OpenTelemetry spans, for exporters that work from records.

The in-process agent opens its SERVER span while the handler runs and its writer ends it from the
record. The sidecar only ever sees the finished :class:`~gpuledger.InvocationRecord`, so it
rebuilds the span from it: :func:`record_to_span` gives a SERVER span named after the handler,
from ``start_ns`` to ``end_ns``, with the same attributes (``exporters._attributes``: ``faas.*``,
``enduser.*``, ``gen_ai.usage.*``, ``gpuledger.*``) and status ERROR for every outcome but ``ok``.

Its trace and span ids are derived from ``record_id`` (SHA-256), so a batch sent again after a
crash or an outage carries the same ids as the first time and receivers that deduplicate on them
count it once. Its resource (:func:`record_resource`) is the worker's, from the record's service,
platform, endpoint, worker, region and GPU fields, by the mapping the worker uses for its own.
The span's instrumentation scope and its resource carry the semantic conventions' schema URL, as
the worker's tracer and resource do (``_names.SCHEMA_URL``).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv.attributes.service_attributes import SERVICE_INSTANCE_ID

from gpuledger._record import InvocationRecord
from gpuledger.exporters._attributes import record_resource_attributes, span_attributes
from gpuledger.exporters._names import SCHEMA_URL

__all__ = [
    "record_resource",
    "record_resource_attributes",
    "record_to_span",
    "span_attributes",
    "span_ids",
]

_ID_DOMAIN: Final = b"gpuledger.span:"
"""Prefixed to the record id before hashing, so these ids collide with no other use of it."""
_STATUS_ERROR: Final = trace.Status(trace.StatusCode.ERROR)
_STATUS_UNSET: Final = trace.Status(trace.StatusCode.UNSET)
_FLAGS: Final = trace.TraceFlags(trace.TraceFlags.SAMPLED)


def span_ids(record_id: str) -> tuple[int, int]:
    """The ``(trace_id, span_id)`` of ``record_id``'s span: the first 128 and next 64 bits of
    SHA-256 over it, never zero (an all-zero id is invalid in OpenTelemetry)."""
    digest = hashlib.sha256(_ID_DOMAIN + record_id.encode("utf-8")).digest()
    trace_id = int.from_bytes(digest[:16], "big") or 1
    span_id = int.from_bytes(digest[16:24], "big") or 1
    return trace_id, span_id


def record_resource(record: InvocationRecord) -> Resource:
    """The resource of the worker that produced ``record``; one object per distinct worker, so a
    batch's spans group under as few resources as there were workers.

    Its ``service.instance.id`` is the worker's id (else its billing worker's), not the one the
    SDK gives this process: the sidecar exports for many workers, and a collector's Prometheus
    exporter tells series apart by ``service.instance.id`` (its ``instance`` label), so under
    one id two workers' counters with the same attributes would overwrite each other."""
    attributes = record_resource_attributes(record)
    instance = record.worker_id or record.billing_worker
    if instance:
        attributes[SERVICE_INSTANCE_ID] = instance
    return _resource(tuple(sorted(attributes.items())))


@functools.lru_cache(maxsize=1024)
def _resource(attributes: tuple[tuple[str, Any], ...]) -> Resource:
    # Resource.create adds the SDK's own attributes and OTEL_RESOURCE_ATTRIBUTES (deployment-wide
    # attributes set on the sidecar); the record's own attributes win over both.
    return Resource.create(dict(attributes), schema_url=SCHEMA_URL)


@functools.cache
def _scope() -> InstrumentationScope:
    from gpuledger._version import __version__  # noqa: PLC0415

    return InstrumentationScope("gpuledger", __version__, SCHEMA_URL)


def record_to_span(record: InvocationRecord, resource: Resource) -> ReadableSpan:
    """The SERVER span of ``record`` under ``resource`` (see the module docstring)."""
    trace_id, span_id = span_ids(record.record_id)
    context = trace.SpanContext(trace_id, span_id, is_remote=False, trace_flags=_FLAGS)
    failed = record.outcome != "ok"
    return ReadableSpan(
        name=record.handler,
        context=context,
        parent=None,
        resource=resource,
        attributes=span_attributes(record),
        kind=trace.SpanKind.SERVER,
        status=_STATUS_ERROR if failed else _STATUS_UNSET,
        start_time=record.start_ns,
        end_time=max(record.end_ns, record.start_ns),
        instrumentation_scope=_scope(),
    )
