"""This worker process's life: when it started, its init phases, and its requests' rhythm.

A worker is cold until its first request; what that request waited for is the *init*: from the
process start (read from the OS) to the request, made of the named phases (``phase()``,
``traced_init``, the platform hooks) and the unnamed rest (interpreter start and imports). When
init ended longer ago than the pre-warm threshold, the worker was warm already and the first
request is not cold, but the init is still recorded on it. Phases that run *inside* a request
(a model loaded lazily on first use) make that request cold and count in its init.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Final

from gpuledger._process import process_start_ns

__all__ = ["InitInfo", "Phase", "WorkerState", "shares"]

UNNAMED_PHASE: Final = "(unnamed)"


@dataclasses.dataclass(slots=True)
class Phase:
    """One named piece of init work, in Unix nanoseconds."""

    name: str
    start_ns: int
    end_ns: int = 0
    parent: str | None = None
    """The enclosing phase's name when phases nest; nested time is not counted twice."""

    @property
    def duration_s(self) -> float:
        """The phase's length in seconds."""
        return max(0, self.end_ns - self.start_ns) / 1e9


@dataclasses.dataclass(frozen=True, slots=True)
class InitInfo:
    """The process init attributed to the first request."""

    process_start_ns: int
    process_start_source: str
    end_ns: int
    """When init ended: the request's start if it was cold, else when the last phase ended."""
    phases: tuple[Phase, ...]

    @property
    def duration_s(self) -> float:
        """Process start to ``end_ns``, seconds."""
        return max(0, self.end_ns - self.process_start_ns) / 1e9

    def phase_seconds(self) -> dict[str, float]:
        """Top-level phases by name (repeats summed), nested ones as ``parent/child``, and the
        unnamed rest; top-level entries and the rest add up to ``duration_s``."""
        seconds: dict[str, float] = {}
        named = 0.0
        for phase in self.phases:
            key = phase.name if phase.parent is None else f"{phase.parent}/{phase.name}"
            seconds[key] = seconds.get(key, 0.0) + phase.duration_s
            if phase.parent is None:
                named += phase.duration_s
        seconds[UNNAMED_PHASE] = max(0.0, self.duration_s - named)
        return seconds


class WorkerState:
    """Per-process bookkeeping behind cold starts and idle gaps; safe across threads."""

    def __init__(self, prewarm_threshold_s: float, start: tuple[int, str] | None = None) -> None:
        # Public fields: the agent inlines the warm fast paths of begin/end on the request path.
        self.prewarm_threshold_ns = int(prewarm_threshold_s * 1e9)
        self.process_start_ns, self.process_start_source = start or process_start_ns()
        self.lock = threading.Lock()
        self.pending_phases: list[Phase] = []
        self._open_phases: list[Phase] = []
        self._ready_ns = 0
        self.served_first = False
        self.ready_ns: int | None = None
        """When init ended, as the first request found it (None before a request)."""
        self.active = 0
        self.last_end_ns = 0
        # Who shares the worker. An invocation that starts alone is only noted as ``lone``
        # (the common case costs one assignment); when another starts beside it, both go into
        # ``running`` (key -> start). ``ended`` keeps the intervals of those that ended while
        # others still ran: enough to tell, when one ends, who shared each instant with it.
        self.lone: object = None
        self.lone_start_ns = 0
        self.running: dict[object, int] = {}
        self.ended: list[tuple[int, int]] = []

    # -- init -------------------------------------------------------------------------------

    def mark_ready(self, now_ns: int) -> None:
        """Something finished preparing this worker at ``now_ns`` (a handler was decorated)."""
        with self.lock:
            self._ready_ns = max(self._ready_ns, now_ns)

    def open_phase(self, name: str, now_ns: int) -> Phase:
        """Start an init phase outside any request."""
        with self.lock:
            parent = self._open_phases[-1].name if self._open_phases else None
            phase = Phase(name, now_ns, parent=parent)
            self._open_phases.append(phase)
            return phase

    def close_phase(self, phase: Phase, now_ns: int) -> None:
        """End ``phase``; it is attributed to the next request."""
        phase.end_ns = now_ns
        with self.lock:
            if phase in self._open_phases:
                self._open_phases.remove(phase)
            self.pending_phases.append(phase)
            self._ready_ns = max(self._ready_ns, now_ns)

    # -- requests ---------------------------------------------------------------------------

    def join(self, key: object, start_ns: int) -> None:
        """(Lock held.) ``key`` starts at ``start_ns`` while others run."""
        lone = self.lone
        if lone is not None:
            self.running[lone] = self.lone_start_ns
            self.lone = None
        self.running[key] = start_ns

    def leave(self, key: object, start_ns: int, end_ns: int) -> list[tuple[int, int]] | None:
        """(Lock held.) ``key`` ended: the intervals of the invocations it overlapped, or None
        when it ran alone throughout."""
        if self.lone is key:
            self.lone = None
            return None
        running = self.running
        running.pop(key, None)
        ended = self.ended
        others = [(start, end) for start, end in ended if end > start_ns]
        others.extend((start, end_ns) for start in running.values())
        if running:
            ended.append((start_ns, end_ns))
            oldest = min(running.values())
            if ended[0][1] <= oldest:
                self.ended = [(start, end) for start, end in ended if end > oldest]
        else:
            ended.clear()
        return others

    def oldest_start_ns(self) -> int | None:
        """(Lock held.) When the longest-running invocation started; None when none runs."""
        starts = list(self.running.values())
        if self.lone is not None:
            starts.append(self.lone_start_ns)
        return min(starts, default=None)

    def begin(self, start_ns: int) -> tuple[bool, InitInfo | None, int]:
        """A request starts: is it cold, the init to attribute to it, and its idle gap (ns)."""
        with self.lock:
            init: InitInfo | None = None
            cold = False
            if not self.served_first:
                self.served_first = True
                ready = self._ready_ns or start_ns
                cold = start_ns - ready <= self.prewarm_threshold_ns
                init = InitInfo(
                    self.process_start_ns,
                    self.process_start_source,
                    start_ns if cold else ready,
                    tuple(sorted(self.pending_phases, key=lambda phase: phase.start_ns)),
                )
                self.pending_phases = []
                self.ready_ns = init.end_ns
                gap = max(0, start_ns - ready)
            elif self.active:
                gap = 0
            else:
                gap = max(0, start_ns - self.last_end_ns)
            self.active += 1
            return cold, init, gap

    def end(self, end_ns: int) -> list[Phase] | None:
        """A request ended; returns init phases that ran since the first request (attributed to
        the request that just ended), if any."""
        with self.lock:
            self.active -= 1
            self.last_end_ns = max(self.last_end_ns, end_ns)
            if not self.pending_phases:
                return None
            phases, self.pending_phases = self.pending_phases, []
            return phases


def shares(start_ns: int, end_ns: int, others: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """``[start_ns, end_ns)`` cut where the number of running invocations changes:
    ``(from, to, n)`` with ``n`` counting this invocation too."""
    changes: dict[int, int] = {}
    for other_start, other_end in others:
        low, high = max(other_start, start_ns), min(other_end, end_ns)
        if high > low:
            changes[low] = changes.get(low, 0) + 1
            changes[high] = changes.get(high, 0) - 1
    segments: list[tuple[int, int, int]] = []
    running = 1
    cursor = start_ns
    for point in sorted(changes):
        if point > cursor:
            segments.append((cursor, point, running))
            cursor = point
        running += changes[point]
    if end_ns > cursor or not segments:
        segments.append((cursor, end_ns, running))
    return segments
