"""The ``gpuledger`` command (click): report, compare, breakeven, pricing, demo, sidecar, proxy."""

from __future__ import annotations

from gpuledger.cli._main import main

__all__ = ["main"]
