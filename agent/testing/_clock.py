"""A clock that moves only when the test says so."""

from __future__ import annotations

from typing import ClassVar

__all__ = ["FakeClock"]


class FakeClock:
    """Wall and monotonic time that move only when told; the process "started" a while before.

    gpuledger reads time through the object given as its ``clock`` setting, which has:

    - ``time_ns()``: wall time, Unix nanoseconds (a record's ``start_ns`` and ``end_ns``, the
      GPU meter's samples);
    - ``perf_counter_ns()``: monotonic nanoseconds (durations);
    - ``process_start_ns()``, optional: when the process started, Unix nanoseconds (cold
      starts and ``init_duration_s`` count from it; without it gpuledger asks the OS).

    ``advance(seconds)`` is the test's side: it moves both clocks forward together, so a handler
    that calls ``clock.advance(2.5)`` lasts exactly 2.5 s.

    Example::

        clock = FakeClock()
        gpuledger.configure(clock=clock, ledger="test.db")

        @gpuledger.traced_handler
        def handler(job):
            clock.advance(2.5)  # the work of the request

        handler({"id": "job-1"})  # its record says duration_s == 2.5
    """

    START_NS: ClassVar[int] = 1_764_000_000 * 10**9
    """The wall-clock instant a new clock shows by default: 2025-11-24T16:00:00Z."""

    def __init__(self, start_ns: int = START_NS, process_age_s: float = 5.0) -> None:
        """A clock at ``start_ns`` (Unix ns) in a process started ``process_age_s`` before."""
        self.wall_ns = start_ns
        self.perf_ns = 10**12
        self.process_start = start_ns - int(process_age_s * 1e9)

    def time_ns(self) -> int:
        """Wall time, Unix nanoseconds."""
        return self.wall_ns

    def perf_counter_ns(self) -> int:
        """Monotonic time, nanoseconds."""
        return self.perf_ns

    def process_start_ns(self) -> int:
        """When the process started, Unix nanoseconds."""
        return self.process_start

    def advance(self, seconds: float) -> None:
        """Move wall and monotonic time forward by ``seconds``."""
        step = round(seconds * 1e9)
        self.wall_ns += step
        self.perf_ns += step
