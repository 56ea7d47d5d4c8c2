"""gpuledger: per-request cost and cold-start telemetry for serverless GPU inference.

``import gpuledger`` is light: no OpenTelemetry SDK, no NVML, no exporters, no threads. They are
loaded when gpuledger is configured, explicitly with :func:`configure` or on the first traced
invocation.
"""

from __future__ import annotations

from gpuledger._calls import external_call, instrument, uninstrument
from gpuledger._config import configure, flush, shutdown
from gpuledger._errors import (
    BudgetExceeded,
    ConfigError,
    GpuledgerError,
    LedgerError,
    PricingError,
)
from gpuledger._handler import phase, traced_handler, traced_init
from gpuledger._invocation import Invocation, current_invocation, record_tokens, tag
from gpuledger._record import InvocationRecord
from gpuledger._version import __version__

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "GpuledgerError",
    "Invocation",
    "InvocationRecord",
    "LedgerError",
    "PricingError",
    "__version__",
    "configure",
    "current_invocation",
    "external_call",
    "flush",
    "instrument",
    "phase",
    "record_tokens",
    "shutdown",
    "tag",
    "traced_handler",
    "traced_init",
    "uninstrument",
]
