"""A worker's bill as it becomes known: the idle time and rounding a request's own charge leaves
out, charged when they are certain.

A request's own charge (fee, its GPU share, the start-up it waited for) is known at its end. Two
charges are the worker's and become known later: **idle** time (where the platform bills it),
known when the next request starts or the worker stops; and **rounding**, known when a billing
span closes: for a platform that bills no idle time, when the worker goes quiet and the next
request starts after a gap (or it stops); otherwise at the stop. :class:`RunningBill` is fed each
request as it ends, with the start of the oldest request still running (None when none), and
returns what became known (wall nanoseconds by category; ``usd_per_ns`` prices them); at the
stop, the rest. What it returns adds up, over the worker's
life, to the idle and rounding charges of :func:`~gpuledger.billing.bill` on the same timeline,
exactly (``tests/test_billing.py`` checks it), so a cost counter fed with them sums to the bill.
"""

from __future__ import annotations

from fractions import Fraction

from gpuledger.billing._engine import Rules, rounded_ns

__all__ = ["RunningBill"]

Charge = tuple[str, int]
"""``(category, wall nanoseconds)``: ``idle`` or ``rounding``; :attr:`RunningBill.usd_per_ns`
prices them (integers summed first, one product per category: cheap on the writer's path)."""


class RunningBill:
    """One worker's idle and rounding charges, as they become certain (not thread-safe: one
    writer feeds it)."""

    __slots__ = ("_covered", "_gpus", "_ready", "_rules", "_span", "_start", "usd_per_ns")

    def __init__(self, rules: Rules, start_ns: int, gpu_count: int = 1) -> None:
        self._rules = rules
        self._start = start_ns
        self._gpus = max(1, gpu_count)
        self.usd_per_ns: Fraction = rules.usd_per_gpu_ns(self._gpus) * self._gpus
        """US dollars per wall nanosecond of this worker: its GPUs held, and the CPU and memory
        it reserves where the platform charges them."""
        self._ready: int | None = None
        self._span: list[int] | None = None
        """The open billing span, ``[start, end]``."""
        self._covered = 0
        """Idle billing: the end of the time covered by requests (or start-up) so far."""

    def _begin(self, ready_ns: int) -> None:
        ready = max(self._start, ready_ns)
        self._ready = ready
        rules = self._rules
        if rules.bills_idle:
            self._span = [self._start if rules.bills_startup else ready, ready]
            self._covered = ready
        elif rules.bills_startup and ready > self._start:
            self._span = [self._start, ready]

    def request(
        self, start_ns: int, end_ns: int, ready_ns: int | None, oldest_running_ns: int | None
    ) -> list[Charge]:
        """A request ``[start_ns, end_ns)`` ended; ``oldest_running_ns`` is the start of the
        oldest request still running, if any. Returns the charges that became certain."""
        if self._ready is None:
            self._begin(start_ns if ready_ns is None else ready_ns)
        ready = self._ready
        assert ready is not None
        start = max(start_ns, ready)
        if end_ns <= start:  # ran while the worker was starting: the start-up covers it
            return []
        # The time up to here that no request covers: a running request covers from its start.
        gap_end = start if oldest_running_ns is None else min(start, max(oldest_running_ns, ready))
        charges: list[Charge] = []
        span = self._span
        if self._rules.bills_idle:
            assert span is not None
            if gap_end > self._covered:
                charges.append(("idle", gap_end - self._covered))
            self._covered = max(self._covered, end_ns)
            span[1] = max(span[1], end_ns)
            return charges
        if span is None:
            self._span = [gap_end, end_ns]
        elif gap_end > span[1]:
            charges.extend(self._close(span))
            self._span = [gap_end, end_ns]
        else:
            span[1] = max(span[1], end_ns)
        return charges

    def stop(self, stop_ns: int) -> list[Charge]:
        """The worker stopped at ``stop_ns``: the charges left (idle to the stop, the last
        span's rounding)."""
        if self._ready is None:
            self._begin(self._start)
        span = self._span
        if span is None:
            return []
        charges: list[Charge] = []
        if self._rules.bills_idle:
            stop = max(stop_ns, span[1])
            if stop > self._covered:
                charges.append(("idle", stop - self._covered))
            span[1] = stop
        charges.extend(self._close(span))
        self._span = None
        return charges

    def _close(self, span: list[int]) -> list[Charge]:
        length = span[1] - span[0]
        if length <= 0:  # an empty span is not billed at all (the engine drops it too)
            return []
        extra = rounded_ns(length, self._rules) - length
        return [("rounding", extra)] if extra else []
