"""Instrumentation for gpuledger: outgoing calls (``gpuledger.instrument()``) and, as they come,
the platform adapters.

:class:`CallAggregator` is the span processor behind ``gpuledger.instrument()``; add it to a
tracer provider of your own to count the CLIENT spans made there as the invocation's calls.
It imports the OpenTelemetry SDK, so it is loaded only on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpuledger.instrumentation._calls import CallAggregator, instrument, uninstrument

__all__ = ["CallAggregator", "instrument", "uninstrument"]
"""``instrument``/``uninstrument`` are ``gpuledger.instrument()``'s machinery (gpuledger's own
API calls them here); everything is loaded on first use."""


def __getattr__(name: str) -> Any:
    if name in __all__:
        from gpuledger.instrumentation import _calls  # noqa: PLC0415  (the OTel SDK, when used)

        return getattr(_calls, name)
    raise AttributeError(f"module 'gpuledger.instrumentation' has no attribute {name!r}")


def __dir__() -> list[str]:
    return list(__all__)
