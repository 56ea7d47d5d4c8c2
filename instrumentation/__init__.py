"""Instrumentation for gpuledger: outgoing calls (``gpuledger.instrument()``) and, as they come,
the platform adapters.

:class:`CallAggregator` is the span processor behind ``gpuledger.instrument()``; add it to a
tracer provider of your own to count the CLIENT spans made there as the invocation's calls.
It imports the OpenTelemetry SDK, so it is loaded only on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CallAggregator"]


def __getattr__(name: str) -> Any:
    if name == "CallAggregator":
        from gpuledger.instrumentation._calls import CallAggregator  # noqa: PLC0415

        return CallAggregator
    raise AttributeError(f"module 'gpuledger.instrumentation' has no attribute {name!r}")
