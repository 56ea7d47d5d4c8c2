"""The simulator's workers as the billing engine sees them: timelines, rules, bills.

Split from ``_simulate`` (the replays): what a replay hands the engine. Instants are integer
nanoseconds from the window's start (``to_ns``); each worker is billed by
:func:`gpuledger.billing.bill` (its timeline, when the caller asked for the timelines) or
:func:`gpuledger.billing.bill_intervals` (the same totals from its requests' begins and ends,
without building them), and :class:`Billing` sums an option's bills exactly.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final

from gpuledger.billing import Request, Rules, WorkerBill, WorkerTimeline, bill

if TYPE_CHECKING:
    from types import ModuleType

    from gpuledger._pricing import Price

__all__ = [
    "NEVER",
    "NS_PER_S",
    "Billing",
    "SimulatedWorker",
    "always_paid",
    "make_request",
    "needs_requests",
    "optional_numpy",
    "requests_of",
    "reserved_rules",
    "seconds_to_ns",
    "to_ns",
]

NS_PER_S: Final = 1_000_000_000
NEVER: Final = 1 << 62
"""Nanoseconds standing for an idle window or a timeout that never ends (146 years)."""


# --- worker timelines: what the billing engine is handed ----------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SimulatedWorker:
    """One worker of a replay, as billed: its timeline, the rules it was billed under, and the
    engine's bill (``bill(timeline, rules, lines=False)``)."""

    role: str
    """``on-demand`` (a serverless worker started for traffic), ``pre-warmed`` (a serverless
    platform's pool, alive the whole window) or ``reserved`` (a reserved GPU's worker)."""
    timeline: WorkerTimeline
    rules: Rules
    bill: WorkerBill


def to_ns(seconds: float) -> int:
    """``seconds`` as integer nanoseconds from the window start: ``round(seconds * 1e9)``."""
    return round(seconds * 1e9)


def seconds_to_ns(values: Sequence[float]) -> array[int]:
    """:func:`to_ns` of each value (numpy's ``rint`` rounds half to even, as ``round`` does, on
    the same products, so the results are identical with or without numpy)."""
    try:
        import numpy  # noqa: PLC0415  (optional: ten times faster on a million values)
    except ImportError:
        return array("q", [round(value * 1e9) for value in values])
    scaled = numpy.asarray(values, dtype=numpy.float64) * 1e9
    ns = array("q")
    ns.frombytes(numpy.rint(scaled).astype(numpy.int64).tobytes())
    return ns


def optional_numpy() -> ModuleType | None:
    """numpy, for the replays and summaries that use it where it is installed (the ``plot`` and
    ``test`` extras bring it), or None: they then take their general paths, with the same
    results. Imported on first use, never with the package."""
    try:
        import numpy  # noqa: PLC0415
    except ImportError:
        return None
    return numpy


def always_paid(rules: Rules) -> Rules:
    """``rules`` for a worker paid from its start to its stop, whatever it does (a pre-warmed
    worker): start-up and idle time billed, so its whole life is one billing span."""
    return dataclasses.replace(rules, bills_startup=True, bills_idle=True)


def reserved_rules(price: Price) -> Rules:
    """The rules of a reserved GPU at ``price``: paid for its whole life. ``Rules.from_price``
    already says so for a ``reserved`` price; any other price is read the same way here (its
    per-GPU-second rate for every second), as the reserved models always have."""
    return dataclasses.replace(always_paid(Rules.from_price(price)), reserved=True)


def _fast_request_maker() -> Callable[[str, int, int], Request]:
    """A ``Request(request_id, start_ns, end_ns)`` constructor: the dataclass's own, or, while
    its fields are the four it has, one setting its slots directly (``_pricing`` builds its
    ``Cost`` the same way), which takes half the time on a replay's million requests."""
    names = tuple(field.name for field in dataclasses.fields(Request))
    if names != ("request_id", "start_ns", "end_ns", "startup_ns"):
        return Request
    setters: list[Any] = [getattr(Request, name).__set__ for name in names]
    set_id, set_start, set_end, set_startup = setters
    new = object.__new__

    def make(request_id: str, start_ns: int, end_ns: int) -> Request:
        request: Request = new(Request)
        set_id(request, request_id)
        set_start(request, start_ns)
        set_end(request, end_ns)
        set_startup(request, 0)
        return request

    return make


make_request: Final = _fast_request_maker()
"""``Request(request_id, start_ns, end_ns)``, fast (see :func:`_fast_request_maker`)."""


class Billing:
    """The engine's bills of one option's workers, summed exactly: integer GPU-nanoseconds and
    request counts per set of rules, priced once (``total_usd``), so that billing thousands of
    workers costs integer additions, not a ``Fraction`` product each."""

    __slots__ = ("_fees", "_gpu_ns", "_rules", "_wall_ns", "workers")

    def __init__(self, workers: list[SimulatedWorker] | None) -> None:
        # Keyed by the rules' identity: a model bills all its workers under one Rules object,
        # and hashing a dataclass of Fractions per worker would cost more than the sum.
        self._rules: dict[int, Rules] = {}
        self._gpu_ns: dict[int, int] = {}
        self._wall_ns: dict[int, int] = {}
        """Worker wall time billed: what the worker's CPU and memory are charged over."""
        self._fees: dict[int, int] = {}
        self.workers = workers

    @property
    def keeps_requests(self) -> bool:
        """Whether every timeline must carry its requests: the caller asked for them."""
        return self.workers is not None

    @property
    def total_usd(self) -> Fraction:
        """Every bill added, exactly."""
        total = Fraction(0)
        for key, gpu_ns in self._gpu_ns.items():
            rules = self._rules[key]
            total += rules.per_gpu_second_usd * gpu_ns / NS_PER_S
            extra = rules.cpu_usd_per_second + rules.memory_usd_per_second
            if extra:
                total += extra * self._wall_ns[key] / NS_PER_S
            total += rules.execution_fee_usd * self._fees[key]
        return total

    @property
    def billed_gpu_ns(self) -> int:
        """GPU time billed, every worker, every category but fees."""
        return sum(self._gpu_ns.values())

    def add(self, role: str, timeline: WorkerTimeline, rules: Rules, copies: int = 1) -> None:
        """Bill ``timeline`` under ``rules`` (``copies`` workers with that same life)."""
        worker_bill = bill(timeline, rules, lines=False)
        self.add_wall(
            rules,
            sum(worker_bill.gpu_ns_by_category.values()) // timeline.gpu_count,
            timeline.gpu_count,
            len(timeline.requests),
            copies,
        )
        if self.workers is not None:
            self.workers.extend([SimulatedWorker(role, timeline, rules, worker_bill)] * copies)

    def add_wall(
        self, rules: Rules, wall_ns: int, gpu_count: int, requests: int, copies: int = 1
    ) -> None:
        """Add a worker billed ``wall_ns`` (``billing.billed_wall_ns``, all categories) on
        ``gpu_count`` GPUs, with ``requests`` requests (their fees), ``copies`` times."""
        key = id(rules)
        if key not in self._rules:
            self._rules[key] = rules  # kept: its id stays its own while the Billing lives
            self._gpu_ns[key] = self._wall_ns[key] = self._fees[key] = 0
        self._gpu_ns[key] += wall_ns * gpu_count * copies
        self._wall_ns[key] += wall_ns * copies
        self._fees[key] += requests * copies


def needs_requests(rules: Rules, billing: Billing) -> bool:
    """Whether a worker's requests can change its bill under ``rules``: always, unless its whole
    life is one billing span (idle time billed) and there is no fee to count. Otherwise they
    are left off its timeline (unless asked for): building them would change nothing."""
    return billing.keeps_requests or not rules.bills_idle or rules.execution_fee_usd != 0


def requests_of(
    names: Iterable[int], begins: Sequence[int], ends: Sequence[int], clamp: int | None
) -> tuple[Request, ...]:
    """Requests named by their positions in the trace, ``[begin, end)``; cut at ``clamp``."""
    if clamp is not None:
        begins = [begin if begin < clamp else clamp for begin in begins]
        ends = [end if end < clamp else clamp for end in ends]
    return tuple(map(make_request, map(str, names), begins, ends))
