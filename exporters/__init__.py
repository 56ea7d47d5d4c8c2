"""The OpenTelemetry side of gpuledger: the one mapping from a record to spans, resource and
metrics, the providers and the OTLP exporter factory.

This ``__init__`` is the room's internal API for the rest of gpuledger. It imports nothing until
a name is used: the OpenTelemetry SDK is loaded when gpuledger is configured with telemetry on,
never at ``import gpuledger``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpuledger.exporters._attributes import (
        external_call_attributes,
        init_span_attributes,
        record_resource_attributes,
        span_attributes,
        worker_resource_attributes,
    )
    from gpuledger.exporters._deferred import DeferredSpan, DeferredTracing
    from gpuledger.exporters._metrics import InvocationMetrics
    from gpuledger.exporters._names import SCHEMA_URL
    from gpuledger.exporters._providers import (
        gpuledger_meter,
        gpuledger_tracer,
        otlp_protocol,
        setup_providers,
    )
    from gpuledger.exporters._records import record_resource, record_to_span

_LAZY = {
    "SCHEMA_URL": "_names",
    "DeferredSpan": "_deferred",
    "DeferredTracing": "_deferred",
    "external_call_attributes": "_attributes",
    "init_span_attributes": "_attributes",
    "record_resource_attributes": "_attributes",
    "span_attributes": "_attributes",
    "worker_resource_attributes": "_attributes",
    "InvocationMetrics": "_metrics",
    "gpuledger_meter": "_providers",
    "gpuledger_tracer": "_providers",
    "otlp_protocol": "_providers",
    "setup_providers": "_providers",
    "record_resource": "_records",
    "record_to_span": "_records",
}

__all__ = [
    "SCHEMA_URL",
    "DeferredSpan",
    "DeferredTracing",
    "InvocationMetrics",
    "external_call_attributes",
    "gpuledger_meter",
    "gpuledger_tracer",
    "init_span_attributes",
    "otlp_protocol",
    "record_resource",
    "record_resource_attributes",
    "record_to_span",
    "setup_providers",
    "span_attributes",
    "worker_resource_attributes",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gpuledger.exporters' has no attribute {name!r}")
    return getattr(importlib.import_module(f"gpuledger.exporters.{module}"), name)


def __dir__() -> list[str]:
    return list(__all__)
