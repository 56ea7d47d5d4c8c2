"""The public API is exactly what __all__ says, and importing gpuledger stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import gpuledger

PUBLIC_API = {
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
}


def test_all_is_pinned() -> None:
    """__all__ changes only on purpose: this list changes with it."""
    assert set(gpuledger.__all__) == PUBLIC_API
    for name in gpuledger.__all__:
        assert hasattr(gpuledger, name), name


def test_public_names_have_docstrings() -> None:
    """Every public callable says what it does."""
    for name in PUBLIC_API - {"__version__"}:
        assert getattr(gpuledger, name).__doc__, name


def test_error_tree() -> None:
    """User-facing errors share one base; setting and pricing errors are ValueErrors too."""
    assert issubclass(gpuledger.ConfigError, gpuledger.GpuledgerError)
    assert issubclass(gpuledger.ConfigError, ValueError)
    assert issubclass(gpuledger.PricingError, ValueError)
    assert issubclass(gpuledger.LedgerError, gpuledger.GpuledgerError)


def test_import_is_light() -> None:
    """import gpuledger (and decorating a handler) loads no OTel SDK, NVML, exporter, SQLite,
    structlog or TOML parser, and starts no thread."""
    probe = """
import json, sys, threading
import gpuledger

@gpuledger.traced_handler
def handler(job):
    return job

heavy = sorted(
    name for name in sys.modules
    if name.split(".")[0] in {"opentelemetry", "pynvml", "structlog", "sqlite3", "tomllib",
                              "click", "wrapt", "asyncio", "grpc", "google"}
)
print(json.dumps({"heavy": heavy, "threads": threading.active_count()}))
"""
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(completed.stdout)
    assert result == {"heavy": [], "threads": 1}
