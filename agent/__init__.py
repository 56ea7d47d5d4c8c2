"""gpuledger: per-request cost and cold-start telemetry for serverless GPU inference."""

from __future__ import annotations

from gpuledger._errors import ConfigError, GpuledgerError, LedgerError, PricingError
from gpuledger._record import InvocationRecord

__all__ = ["ConfigError", "GpuledgerError", "InvocationRecord", "LedgerError", "PricingError"]
