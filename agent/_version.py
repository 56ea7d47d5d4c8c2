"""The distribution's version, in a module of its own so that nothing needs ``gpuledger/__init__``
(which imports the public API) to read it."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
