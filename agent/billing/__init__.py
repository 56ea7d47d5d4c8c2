"""Worker bills: what a platform charges for one worker's life (issue 13, in progress).

:func:`bill` is the one billing engine: a pure function from a :class:`WorkerTimeline` and a
platform's :class:`Rules` to a :class:`WorkerBill`, exact. Not yet called by the recorder, the
report, the sidecar or the simulator: those move onto it next.
"""

from __future__ import annotations

from gpuledger.billing._engine import (
    CATEGORIES,
    Category,
    Line,
    Request,
    Rules,
    WorkerBill,
    WorkerTimeline,
    bill,
)

__all__ = [
    "CATEGORIES",
    "Category",
    "Line",
    "Request",
    "Rules",
    "WorkerBill",
    "WorkerTimeline",
    "bill",
]
