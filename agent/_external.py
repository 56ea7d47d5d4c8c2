"""An invocation's outgoing calls, and their summary: count, call time, and external wait.

A call is ``(start_ns, end_ns, target, operation, outcome, bytes)``, appended to the running
invocation (any thread) by ``gpuledger.external_call`` or by the span processor of
``gpuledger.instrumentation``. When the invocation ends, :func:`summarise` turns its calls into
the count, the summed call time, and the **external wait**: the wall time covered by at least one
call (the union of their intervals; parallel calls overlap, so the sum overstates what the
request waited), overall and per target.

The request path's end (``_agent``) and the span processor both use it: it imports neither.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable
from typing import Final

from gpuledger._invocation import Invocation

__all__ = [
    "OK",
    "Call",
    "CallSummary",
    "calls_measured",
    "mark_measured",
    "record_call",
    "summarise",
    "union_ns",
]

Call = tuple[int, int, str, str, str, int | None]
"""``(start_ns, end_ns, target, operation, outcome, bytes)``."""

_lock = threading.Lock()
_state = {"measured": False}
"""Whether anything counts calls in this process (``instrument()`` or an ``external_call``):
then an invocation that made none made 0, not an unknown number."""

OK: Final = "ok"


def mark_measured() -> None:
    """From now on, calls are counted: an invocation with none records 0."""
    _state["measured"] = True


def calls_measured() -> bool:
    """Whether calls are counted in this process."""
    return _state["measured"]


def record_call(
    invocation: Invocation,
    start_ns: int,
    end_ns: int,
    target: str,
    operation: str,
    outcome: str = OK,
    size: int | None = None,
) -> None:
    """Add one finished call to ``invocation`` (any thread)."""
    calls = invocation.calls
    if calls is None:
        with _lock:
            calls = invocation.calls
            if calls is None:
                calls = invocation.calls = []
    calls.append((start_ns, end_ns, target, operation, outcome, size))


@dataclasses.dataclass(slots=True)
class CallSummary:
    """An invocation's calls: count, summed time, union (wait), and the same per target."""

    calls: int
    call_seconds: float
    wait_seconds: float
    errors: int
    targets: dict[str, dict[str, float | int]]
    """target -> {"calls", "call_s", "wait_s", "errors", "bytes" (when known)}."""


def union_ns(intervals: Iterable[tuple[int, int]]) -> int:
    total = 0
    cursor: int | None = None
    for start, end in sorted(intervals):
        if cursor is None or start > cursor:
            total += end - start
            cursor = end
        elif end > cursor:
            total += end - cursor
            cursor = end
    return total


def summarise(
    calls: list[Call] | None, start_ns: int, end_ns: int, horizon_ns: int | None = None
) -> CallSummary:
    """The calls that ended inside the invocation, clipped to ``[start_ns, end_ns]``, summarised.

    A call "ended inside" when its end (a span's wall-clock end) is no later than ``horizon_ns``,
    the wall clock read when the invocation closed (``end_ns`` when not given). The two differ:
    ``end_ns`` is the start plus a ``perf_counter`` duration, and the wall clock can be stepped or
    slewed against it by tens of microseconds, so a call that ended just before the handler
    returned could otherwise read as later than ``end_ns`` and be dropped. A call that ended
    after the horizon belongs to a thread the invocation left behind.
    """
    horizon = end_ns if horizon_ns is None else max(end_ns, horizon_ns)
    kept: list[tuple[int, int, str, str, int | None]] = []
    for call_start, call_end, target, _, outcome, size in list(calls or ()):
        if call_end > horizon:
            continue  # ended after the invocation: a thread it left behind
        end = min(max(call_end, start_ns), end_ns)
        kept.append((min(max(call_start, start_ns), end), end, target, outcome, size))
    targets: dict[str, dict[str, float | int]] = {}
    by_target: dict[str, list[tuple[int, int]]] = {}
    errors = 0
    for call_start, call_end, target, outcome, size in kept:
        entry = targets.get(target)
        if entry is None:
            entry = targets[target] = {"calls": 0, "call_s": 0.0, "wait_s": 0.0, "errors": 0}
            by_target[target] = []
        entry["calls"] += 1
        entry["call_s"] += (call_end - call_start) / 1e9
        failed = not _succeeded(outcome)
        if failed:
            entry["errors"] += 1
            errors += 1
        if size is not None:
            entry["bytes"] = entry.get("bytes", 0) + size
        by_target[target].append((call_start, call_end))
    for target, intervals in by_target.items():
        targets[target]["wait_s"] = union_ns(intervals) / 1e9
    return CallSummary(
        calls=len(kept),
        call_seconds=sum((end - start) for start, end, *_ in kept) / 1e9,
        wait_seconds=union_ns((start, end) for start, end, *_ in kept) / 1e9,
        errors=errors,
        targets=targets,
    )


def _succeeded(outcome: str) -> bool:
    if outcome == OK:
        return True
    if outcome.isdigit():
        return int(outcome) < 400  # an HTTP status
    return False
