"""What users test their handlers with. ``gpuledger.testing.nvml``: a faithful NVML replay."""

from __future__ import annotations

from gpuledger.testing import nvml

__all__ = ["nvml"]
