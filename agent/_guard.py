"""Containing the agent's own failures: the handler always runs, and nothing fails silently.

A failure inside gpuledger (an exporter that raises, a ledger that cannot be written, a bug) is
caught where it happens, counted by kind, and logged the first time each kind occurs. The counts
are exported as the ``gpuledger.telemetry.errors`` metric. Under ``strict`` (the test suite sets
it) the failure is re-raised instead, so tests see what users would only see in a counter.
"""

from __future__ import annotations

from gpuledger._counters import count, count_first, error_counts, reset
from gpuledger._logging import get_logger

__all__ = ["count", "error_counts", "log_once", "record_failure", "reset", "set_strict"]

_strict = False


def set_strict(strict: bool) -> None:
    """Re-raise contained failures (``True``) or only count and log them (``False``)."""
    global _strict
    _strict = strict


def record_failure(kind: str, error: BaseException) -> None:
    """Count ``error`` under ``kind`` and log it if it is the first of its kind.

    Called from an ``except`` block; re-raises the active exception under strict mode.
    """
    log_once(
        kind,
        "gpuledger internal failure; your handler is unaffected, further ones are counted "
        "in gpuledger.telemetry.errors",
        error,
    )
    if _strict:
        raise error


def log_once(kind: str, message: str, error: BaseException) -> None:
    """Count ``error`` under ``kind``; log ``message`` with it the first time ``kind`` fails.

    Never raises, strict or not: for processes that serve no handler (the sidecar), where a
    failure is retried and must only be said once and counted.
    """
    if count_first(kind):
        get_logger().error(message, kind=kind, error=f"{type(error).__name__}: {error}")
