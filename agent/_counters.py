"""gpuledger's own failure counts, by kind: the ``gpuledger.telemetry.errors`` metric.

Apart from ``_guard`` (which counts and logs) so that the logging module can count its own
failures (``log.write``) without importing what logs through it.
"""

from __future__ import annotations

import threading
from collections import Counter

__all__ = ["count", "count_first", "error_counts", "reset"]

_lock = threading.Lock()
_counts: Counter[str] = Counter()


def count(kind: str, amount: int = 1) -> None:
    """Count an event that is not an exception (records dropped at the bound, for example)."""
    with _lock:
        _counts[kind] += amount


def count_first(kind: str) -> bool:
    """Count one ``kind``; True if it is the first."""
    with _lock:
        _counts[kind] += 1
        return _counts[kind] == 1


def error_counts() -> dict[str, int]:
    """Failures so far, by kind."""
    with _lock:
        return dict(_counts)


def reset() -> None:
    """Forget all counts (tests)."""
    with _lock:
        _counts.clear()
