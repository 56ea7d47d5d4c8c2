"""When a process really started, and whether it still runs, read from the operating system.

The one reader of ``/proc/<pid>/stat`` in gpuledger: this process's start (cold starts), an
upstream model server's start (the proxy), a worker's start and liveness (the sidecar's
killed-invocation watcher).

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

__all__ = [
    "IMPORT_TIME_NS",
    "process_alive",
    "process_start",
    "process_start_ns",
    "started_ns",
]

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
    return started_ns(os.getpid())


def started_ns(pid: int) -> int | None:
    """When process ``pid`` started, as Unix ns, from ``/proc/<pid>/stat``; None if unreadable.

    Field 22 is the start in clock ticks since boot, on the clock that includes suspend
    (CLOCK_BOOTTIME); 10 ms resolution at the usual 100 Hz.
    """
    start_ticks = process_start(pid)
    if start_ticks is None:
        return None
    try:
        age_s = time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):  # no CLOCK_BOOTTIME or sysconf: not Linux
        return None
    if age_s < 0:
        return None
    return time.time_ns() - int(age_s * 1e9)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks)`` of ``pid`` from ``/proc``; None where unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])  # fields[0] is field 3; field 22 is the start
    except (IndexError, ValueError):
        return None


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if unknown."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def process_alive(pid: int, started: int | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` (None: unknown) still runs.

    A zombie counts as dead (it ran its last instruction; with no init to reap it, it would
    otherwise look alive for ever), and so does a pid reused by a process that started later.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, ticks = stat
    if state in ("Z", "X", "x"):
        return False
    return started is None or ticks == started


def _from_psutil() -> int | None:
    try:
        import psutil  # type: ignore[import-untyped]  # noqa: PLC0415  (optional, rarely present)
    except ImportError:
        return None
    try:
        return int(psutil.Process().create_time() * 1e9)
    except Exception:  # any psutil failure means: fall back
        return None
