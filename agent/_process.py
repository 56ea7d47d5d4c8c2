"""When this process really started, read from the operating system.

A cold start is measured from the process's start, not from when gpuledger was imported: the
interpreter start and the imports before gpuledger are part of what the first request waited for.
Linux gives the start in clock ticks since boot (``/proc/self/stat`` field 22, 10 ms resolution
at the usual 100 Hz); anywhere else, or if ``/proc`` is unreadable, psutil is used when installed,
and as a last resort the time gpuledger was imported, with the source recorded so nobody mistakes
the fallback for the real thing.
"""

from __future__ import annotations

import os
import time
from typing import Final

__all__ = ["IMPORT_TIME_NS", "process_start_ns"]

IMPORT_TIME_NS: Final = time.time_ns()


def process_start_ns() -> tuple[int, str]:
    """The process start as Unix nanoseconds, and its source: ``proc``, ``psutil`` or ``import``."""
    started = _from_proc()
    if started is not None:
        return started, "proc"
    started = _from_psutil()
    if started is not None:
        return started, "psutil"
    return IMPORT_TIME_NS, "import"


def _from_proc() -> int | None:
    try:
        with open(f"/proc/{os.getpid()}/stat", "rb") as stat_file:
            stat = stat_file.read()
        # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
        fields = stat[stat.rindex(b")") + 2 :].split()
        start_ticks = int(fields[19])  # field 22 overall; fields[0] is field 3
        ticks_per_second = os.sysconf("SC_CLK_TCK")
        # starttime counts from boot on the clock that includes suspend (CLOCK_BOOTTIME).
        age_s = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / ticks_per_second
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    if age_s < 0:
        return None
    return time.time_ns() - int(age_s * 1e9)


def _from_psutil() -> int | None:
    try:
        import psutil  # type: ignore[import-untyped]  # noqa: PLC0415  (optional, rarely present)
    except ImportError:
        return None
    try:
        return int(psutil.Process().create_time() * 1e9)
    except Exception:  # any psutil failure means: fall back
        return None
