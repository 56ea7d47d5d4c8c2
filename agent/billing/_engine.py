"""The billing engine: one worker's life, and a platform's rules, in; that worker's bill out.

Platforms bill **workers** (containers), not requests: from when the worker starts (or is ready)
to when it stops or goes idle, with rounding, minimums and per-request fees applied the way the
platform applies them. :func:`bill` is a pure function from a :class:`WorkerTimeline` and
:class:`Rules` to a :class:`WorkerBill`, whose lines each carry a category:

- ``startup``: the worker's start to ready (its init), when the platform bills it;
- ``request``: time at least one request was running, split equally among the requests running
  at each instant (a line per request and stretch of constant concurrency);
- ``idle``: the rest of the worker's billed life (between requests, and after the last until it
  stops), when the platform bills a warm worker's idle time;
- ``rounding``: what the platform's increment and minimum add to each **billing span** (a stretch
  of time billed without a break: the whole life of a worker whose idle time is billed, else
  each busy stretch, with the startup before it);
- ``fee``: the platform's per-request fee (per request: the seed's edition charges RunPod's
  execution fee on every request).

Where a platform also charges for the CPU cores and memory a worker reserves (Modal), they are
billed over exactly the same wall time as its GPUs, every time category included: a time line's
price is per GPU-nanosecond and includes the worker's CPU and memory, shared equally among the
GPUs it holds, so one bill (and each of its lines) carries every resource, and
``WorkerBill.usd_by_resource`` says how much of it each resource is.

Each instant of the worker's life is in at most one category (a request waiting for the worker
to be ready is in ``startup``, never also in ``request``), so no second is charged twice.
Arithmetic is exact: times are integer nanoseconds, rates and amounts :class:`~fractions.Fraction`
of a US dollar, so the lines add up to the bill exactly; :meth:`WorkerBill.nano_usd` turns them
into integer nano-dollars whose sum is the rounded total, also exactly. Floats appear only at
the edges (``Rules.from_price``, ``float()`` of a result).

Nothing here reads the clock, the ledger or the environment; the recorder, the report, the
sidecar and the simulator are to call this one engine (issue 13).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from gpuledger._pricing import Price

__all__ = [
    "CATEGORIES",
    "RESOURCES",
    "Category",
    "Line",
    "Request",
    "Resource",
    "Rules",
    "WorkerBill",
    "WorkerTimeline",
    "allocate",
    "bill",
    "bill_intervals",
    "bill_lines",
    "billed_wall_ns",
    "billed_wall_ns_unserved",
    "rounded_ns",
]

Category = Literal["startup", "request", "idle", "rounding", "fee"]
CATEGORIES: Final[tuple[Category, ...]] = ("startup", "request", "idle", "rounding", "fee")
Resource = Literal["gpu", "cpu", "memory"]
RESOURCES: Final[tuple[Resource, ...]] = ("gpu", "cpu", "memory")
"""What a worker's billed time pays for (fees are per request, not a resource)."""
NS_PER_S: Final = 1_000_000_000
NANO_USD_PER_USD: Final = 1_000_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """One request the worker served: ``[start_ns, end_ns)``, wall clock.

    ``startup_ns`` is start-up work the request did itself (a model loaded lazily on first use):
    it is inside the request's time, so it is charged once, as ``startup`` rather than
    ``request``, never on top of it.
    """

    request_id: str
    start_ns: int
    end_ns: int
    startup_ns: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerTimeline:
    """One worker's life: started, ready (init done), the requests it served, stopped.

    Instants are integer Unix nanoseconds. ``start_ns <= ready_ns``; every request lies within
    ``[start_ns, stop_ns]`` and ``stop_ns`` is at or after the last request's end.
    """

    start_ns: int
    ready_ns: int
    stop_ns: int
    requests: tuple[Request, ...] = ()
    gpu_count: int = 1

    def __post_init__(self) -> None:
        problems = []
        if not self.start_ns <= self.ready_ns <= self.stop_ns:
            problems.append("expected start_ns <= ready_ns <= stop_ns")
        if self.gpu_count < 1:
            problems.append(f"gpu_count must be 1 or more, got {self.gpu_count}")
        for index, request in enumerate(self.requests):
            if not self.start_ns <= request.start_ns <= request.end_ns <= self.stop_ns:
                problems.append(
                    f"requests[{index}] ({request.request_id}) is not within the worker's life"
                )
        if problems:
            raise ValueError("bad worker timeline: " + "; ".join(problems))


@dataclasses.dataclass(frozen=True, slots=True)
class Rules:
    """How a platform bills a worker: the price of a GPU-second and the rules around it, and
    what the worker's CPU and memory cost per second of the same billed time."""

    per_gpu_second_usd: Fraction
    execution_fee_usd: Fraction = Fraction(0)
    """Charged per request."""
    increment_ns: int = 0
    """Each billing span's time is rounded up to a multiple of this (0: no rounding)."""
    minimum_ns: int = 0
    """Least time billed per billing span."""
    bills_startup: bool = False
    bills_idle: bool = False
    idle_window_ns: int | None = None
    """How long a warm worker waits for work before the platform stops it (None: unknown)."""
    reserved: bool = False
    """A reserved GPU: paid from its start to its stop, whatever it does."""
    cpu_usd_per_second: Fraction = Fraction(0)
    """The worker's CPU per wall-second it is billed (all the cores it reserves, not per GPU);
    0 where the platform charges the GPU alone."""
    memory_usd_per_second: Fraction = Fraction(0)
    """The worker's memory per wall-second it is billed (all of it)."""

    @classmethod
    def from_price(
        cls, price: Price, *, cpu: float | None = None, memory_gib: float | None = None
    ) -> Rules:
        """The rules of a catalogue price. Its float dollars are read as the decimals they were
        written as (``0.00076`` is 76/100000, not the nearest binary fraction).

        ``cpu`` (physical cores) and ``memory_gib`` are what the worker reserves; where the
        platform charges them, the worker pays for the reservation or the platform's minimum,
        whichever is higher (None: the minimum)."""
        rate = price.per_gpu_second_usd
        if price.kind == "reserved" and price.hourly_usd is not None:
            rate_exact = _decimal(price.hourly_usd) / 3600
        else:
            rate_exact = _decimal(rate)
        return cls(
            per_gpu_second_usd=rate_exact,
            execution_fee_usd=_decimal(price.execution_fee_usd),
            increment_ns=round(price.billing_increment_s * NS_PER_S),
            minimum_ns=round(price.minimum_billed_s * NS_PER_S),
            bills_startup=price.bills_startup or price.kind == "reserved",
            bills_idle=price.bills_idle or price.kind == "reserved",
            idle_window_ns=(
                None if price.idle_window_s is None else round(price.idle_window_s * NS_PER_S)
            ),
            reserved=price.kind == "reserved",
            cpu_usd_per_second=_reservation(price.cpu_core_second_usd, cpu, price.min_cpu_cores),
            memory_usd_per_second=_reservation(
                price.memory_gib_second_usd, memory_gib, price.min_memory_gib
            ),
        )

    def usd_per_gpu_ns(self, gpu_count: int = 1) -> Fraction:
        """The price of one GPU-nanosecond of a worker holding ``gpu_count`` GPUs: the GPU's,
        plus the worker's CPU and memory shared equally among its GPUs."""
        extra = self.cpu_usd_per_second + self.memory_usd_per_second
        if not extra:
            return self.per_gpu_second_usd / NS_PER_S
        return (self.per_gpu_second_usd + extra / gpu_count) / NS_PER_S

    def per_gpu_second_by_resource(self, gpu_count: int = 1) -> dict[Resource, Fraction]:
        """US dollars per GPU-second of a worker holding ``gpu_count`` GPUs, per resource (the
        worker's CPU and memory shared equally among its GPUs); they add up to
        :meth:`usd_per_gpu_ns` x 10^9."""
        return {
            "gpu": self.per_gpu_second_usd,
            "cpu": self.cpu_usd_per_second / gpu_count,
            "memory": self.memory_usd_per_second / gpu_count,
        }

    def to_json(self) -> dict[str, object]:
        """The rules as JSON values, exact (amounts as decimal or fraction strings): what a
        worker's records carry, so that a later catalogue never changes an old bill. The CPU
        and memory prices appear only where they are not 0, so rules without them read (and
        are written) as before."""
        values: dict[str, object] = {
            "per_gpu_second_usd": str(self.per_gpu_second_usd),
            "execution_fee_usd": str(self.execution_fee_usd),
            "increment_ns": self.increment_ns,
            "minimum_ns": self.minimum_ns,
            "bills_startup": self.bills_startup,
            "bills_idle": self.bills_idle,
            "idle_window_ns": self.idle_window_ns,
            "reserved": self.reserved,
        }
        if self.cpu_usd_per_second:
            values["cpu_usd_per_second"] = str(self.cpu_usd_per_second)
        if self.memory_usd_per_second:
            values["memory_usd_per_second"] = str(self.memory_usd_per_second)
        return values

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> Rules:
        """The rules :meth:`to_json` wrote; ValueError naming the field that is wrong. Rules
        frozen before CPU and memory were priced have neither: 0."""
        try:
            window = values.get("idle_window_ns")
            rules = cls(
                per_gpu_second_usd=Fraction(str(values["per_gpu_second_usd"])),
                execution_fee_usd=Fraction(str(values.get("execution_fee_usd", "0"))),
                increment_ns=int(values.get("increment_ns", 0)),
                minimum_ns=int(values.get("minimum_ns", 0)),
                bills_startup=bool(values.get("bills_startup", False)),
                bills_idle=bool(values.get("bills_idle", False)),
                idle_window_ns=None if window is None else int(window),
                reserved=bool(values.get("reserved", False)),
                cpu_usd_per_second=Fraction(str(values.get("cpu_usd_per_second", "0"))),
                memory_usd_per_second=Fraction(str(values.get("memory_usd_per_second", "0"))),
            )
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
            raise ValueError(f"bad billing rules {dict(values)!r}: {error}") from None
        if rules.cpu_usd_per_second < 0 or rules.memory_usd_per_second < 0:
            raise ValueError(f"bad billing rules {dict(values)!r}: a negative CPU or memory price")
        return rules


@dataclasses.dataclass(frozen=True, slots=True)
class Line:
    """One charge: a category, the wall-clock stretch it covers (none for a fee), the GPU
    nanoseconds charged (a fraction where a stretch is shared by concurrent requests), the
    price (US dollars per GPU-nanosecond, the worker's CPU and memory included:
    :meth:`Rules.usd_per_gpu_ns`; a fee's amount), and the request it belongs to (``request``
    and ``fee`` lines). ``usd`` is worked out when asked: a report attributing a million lines
    never needs it."""

    category: Category
    start_ns: int
    end_ns: int
    gpu_ns: int | Fraction
    price: Fraction
    """Per GPU-nanosecond for a time line (every resource); the amount for a fee."""
    request_id: str | None = None

    @property
    def usd(self) -> Fraction:
        """The line's amount: its GPU time at its price (every resource), or the fee."""
        if self.category == "fee":
            return self.price
        return self.gpu_ns * self.price


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerBill:
    """A worker's charges, exact. ``total_usd`` is the sum of the lines' ``usd`` (and of
    ``usd_by_category``; and of the fees and ``usd_by_resource``); ``lines`` is empty when the
    bill was asked for without them."""

    lines: tuple[Line, ...]
    total_usd: Fraction
    billed_gpu_ns: Fraction
    """GPU time charged, every category but ``fee`` (wall time x GPUs)."""
    usd_by_category: dict[Category, Fraction]
    gpu_ns_by_category: dict[Category, Fraction]
    stop_ns: int
    """The worker's stop as billed (its timeline's)."""
    usd_by_resource: dict[Resource, Fraction]
    """US dollars of billed time per resource (GPU, CPU, memory), every time category; fees
    apart."""

    def by_category(self) -> dict[Category, Fraction]:
        """US dollars per category (every category present, 0 when none)."""
        return dict(self.usd_by_category)

    def nano_usd(self) -> list[int]:
        """Each line's amount in integer nano-dollars, in line order, summing exactly to the
        total rounded to the nearest nano-dollar (the largest remainders get the spare units)."""
        return allocate([line.usd * NANO_USD_PER_USD for line in self.lines])


def bill(timeline: WorkerTimeline, rules: Rules, *, lines: bool = True) -> WorkerBill:
    """The bill of one worker under ``rules`` (see the module docstring).

    With ``lines=False`` only the totals per category are worked out (integer sums, one exact
    product per category): what a simulator pricing millions of requests needs.
    """
    if not lines and not any(r.startup_ns for r in timeline.requests):
        return bill_intervals(
            timeline.start_ns,
            timeline.ready_ns,
            timeline.stop_ns,
            [r.start_ns for r in timeline.requests],
            [r.end_ns for r in timeline.requests],
            rules,
            gpu_count=timeline.gpu_count,
        )
    wall_ns, lines_out = _layout(timeline, rules, lines=True)
    gpus = timeline.gpu_count
    rate_per_gpu_ns = rules.usd_per_gpu_ns(gpus)
    gpu_ns: dict[Category, Fraction] = {
        category: Fraction(ns * gpus) for category, ns in wall_ns.items()
    }
    if any(r.startup_ns for r in timeline.requests):
        # Start-up work done inside requests moves from ``request`` to ``startup``.
        gpu_ns["startup"] = Fraction(
            sum(line.gpu_ns for line in lines_out if line.category == "startup")
        )
        gpu_ns["request"] = Fraction(
            sum(line.gpu_ns for line in lines_out if line.category == "request")
        )
    fee_count = len(timeline.requests) if rules.execution_fee_usd else 0
    usd: dict[Category, Fraction] = {
        category: amount * rate_per_gpu_ns for category, amount in gpu_ns.items()
    }
    usd["fee"] = rules.execution_fee_usd * fee_count
    billed = sum(gpu_ns.values(), Fraction(0))
    return WorkerBill(
        lines=tuple(lines_out) if lines else (),
        total_usd=sum(usd.values(), Fraction(0)),
        billed_gpu_ns=billed,
        usd_by_category=usd,
        gpu_ns_by_category=gpu_ns,
        stop_ns=timeline.stop_ns,
        usd_by_resource=_by_resource(rules, gpus, billed),
    )


def bill_lines(timeline: WorkerTimeline, rules: Rules) -> tuple[Line, ...]:
    """The lines of ``bill(timeline, rules)`` without its totals: what attributing a bill to
    requests reads (a report over millions of requests bills every worker; working out each
    bill's dollars too would cost more than the lines)."""
    return tuple(_layout(timeline, rules, lines=True)[1])


def _layout(
    timeline: WorkerTimeline, rules: Rules, *, lines: bool
) -> tuple[dict[Category, int], list[Line]]:
    """A worker's billed wall time per category, and (``lines``, or start-up work inside a
    request to move) its bill's lines."""
    gpus = timeline.gpu_count
    rate_per_gpu_ns = rules.usd_per_gpu_ns(gpus)
    busy = _union((r.start_ns, r.end_ns) for r in timeline.requests)
    # The request category starts when the worker is ready: before it, a request waits on the
    # start-up, which is its own category (billed or not), never both.
    served = _clip(busy, timeline.ready_ns, timeline.stop_ns)
    startup = (timeline.start_ns, timeline.ready_ns)
    has_startup = rules.bills_startup and startup[1] > startup[0]
    idle = _gaps(served, timeline.ready_ns, timeline.stop_ns) if rules.bills_idle else []
    # Billing spans: stretches billed without a break, each rounded on its own.
    spans = _union([*served, *idle, *([startup] if has_startup else [])])
    rounding = [
        (end, end + extra)
        for start, end in spans
        if (extra := rounded_ns(end - start, rules) - (end - start))
    ]
    fee_count = len(timeline.requests) if rules.execution_fee_usd else 0

    wall_ns: dict[Category, int] = {
        "startup": startup[1] - startup[0] if has_startup else 0,
        "request": sum(end - start for start, end in served),
        "idle": sum(end - start for start, end in idle),
        "rounding": sum(end - start for start, end in rounding),
        "fee": 0,
    }
    lines_out: list[Line] = []
    if lines or any(r.startup_ns for r in timeline.requests):
        if has_startup:
            lines_out.append(_time_line("startup", *startup, gpus, rate_per_gpu_ns))
        lines_out.extend(_request_lines(timeline.requests, served, gpus, rate_per_gpu_ns))
        lines_out.extend(
            _time_line("idle", start, end, gpus, rate_per_gpu_ns) for start, end in idle
        )
        lines_out.extend(
            _time_line("rounding", start, end, gpus, rate_per_gpu_ns) for start, end in rounding
        )
        lines_out.extend(
            Line("fee", r.start_ns, r.start_ns, 0, rules.execution_fee_usd, r.request_id)
            for r in timeline.requests[:fee_count]
        )
    return wall_ns, lines_out


def bill_intervals(
    start_ns: int,
    ready_ns: int,
    stop_ns: int,
    begins: Sequence[int],
    ends: Sequence[int],
    rules: Rules,
    *,
    gpu_count: int = 1,
) -> WorkerBill:
    """The totals of :func:`bill` (no lines) for a worker whose requests are given as their
    begins and ends, in any order: :func:`billed_wall_ns`, priced (one exact product per
    category). ``bill(timeline, rules, lines=False)`` is this. The caller vouches for the
    timeline (``WorkerTimeline`` checks one)."""
    wall = billed_wall_ns(start_ns, ready_ns, stop_ns, begins, ends, rules)
    return _totals(wall, gpu_count, rules, len(ends), stop_ns)


def billed_wall_ns(
    start_ns: int,
    ready_ns: int,
    stop_ns: int,
    begins: Sequence[int],
    ends: Sequence[int],
    rules: Rules,
) -> dict[Category, int]:
    """The wall nanoseconds a worker is billed, per time category (``startup``, ``request``,
    ``idle``, ``rounding``; ``fee`` 0), for requests given as their begins and ends in any
    order: one pass over them (sorted first only when they are not), no :class:`Request`
    objects, integers only. The bill is these times the GPUs held, at the rate, plus a fee per
    request: what a simulator billing thousands of workers sums before pricing once."""
    has_startup = rules.bills_startup and ready_ns > start_ns
    startup = ready_ns - start_ns if has_startup else 0
    swept = _sweep(begins, ends, ready_ns, stop_ns, startup, rules)
    if swept is None:  # not in order of their begins: sort them once
        order = sorted(range(len(begins)), key=begins.__getitem__)
        swept = _sweep(
            [begins[i] for i in order], [ends[i] for i in order], ready_ns, stop_ns, startup, rules
        )
        assert swept is not None
    busy, rounding, joined = swept
    idle = 0
    if rules.bills_idle:  # the whole billed life is one span
        idle = max(0, stop_ns - ready_ns) - busy
        life = startup + idle + busy
        rounding = rounded_ns(life, rules) - life if life > 0 else 0
    elif startup and not joined:  # the start-up is a billing span of its own
        rounding += rounded_ns(startup, rules) - startup
    return {"startup": startup, "request": busy, "idle": idle, "rounding": rounding, "fee": 0}


def billed_wall_ns_unserved(
    starts_ns: Iterable[int], readies_ns: Iterable[int], stops_ns: Iterable[int], rules: Rules
) -> dict[Category, int]:
    """:func:`billed_wall_ns` of many workers given without their requests (``begins`` and
    ``ends`` empty), summed per category: each worker's start-up, its idle life where idle time
    is billed, and the rounding of its own billing spans, in one call.

    What a simulator needs for the thousands of workers whose requests cannot change their bill
    (their whole life one billing span and no fee): a call per worker costs more than the
    arithmetic. The same integer rules as :func:`billed_wall_ns`, worker by worker; the loop is
    written out (no call per worker) and a test holds it equal to the sum of the single calls."""
    bills_startup, bills_idle = rules.bills_startup, rules.bills_idle
    increment, minimum = rules.increment_ns, rules.minimum_ns
    startups = idles = roundings = 0
    for start, ready, stop in zip(starts_ns, readies_ns, stops_ns, strict=True):
        startup = ready - start if bills_startup and ready > start else 0
        if bills_idle:  # the whole billed life is one span
            idle = stop - ready if stop > ready else 0
            span = startup + idle
            idles += idle
        elif startup:  # no request: the start-up is a billing span of its own
            span = startup
        else:
            continue
        startups += startup
        if span > 0:
            billed = -(-span // increment) * increment if increment > 0 else span
            roundings += (billed if billed > minimum else minimum) - span
    return {"startup": startups, "request": 0, "idle": idles, "rounding": roundings, "fee": 0}


def _sweep(
    begins: Sequence[int],
    ends: Sequence[int],
    ready_ns: int,
    stop_ns: int,
    startup: int,
    rules: Rules,
) -> tuple[int, int, bool] | None:
    """One pass over requests in order of their begins, clipped to ``[ready, stop]``: the busy
    time, the rounding of each busy stretch (where idle time is not billed; the first with the
    start-up before it when it begins at ready, as the engine's union makes them one span), and
    whether the start-up joined the first stretch. None as soon as a begin is out of order.

    Conditional expressions, not min()/max() or a call per stretch: it runs once per request of
    a replay's million."""
    increment, minimum = rules.increment_ns, rules.minimum_ns
    per_stretch = not rules.bills_idle and (increment > 0 or minimum > 0)
    busy = rounding = 0
    joined = False
    previous = -(1 << 63)
    low = high = -1
    for first, last in zip(begins, ends, strict=True):
        if first < previous:
            return None
        previous = first
        begin = first if first > ready_ns else ready_ns
        end = last if last < stop_ns else stop_ns
        if end <= begin:
            continue
        if high < 0:
            joined = startup > 0 and begin == ready_ns
        elif begin <= high:
            high = end if end > high else high
            continue
        else:
            busy += high - low
            if per_stretch:
                length = high - low + (startup if joined and low == ready_ns else 0)
                billed = -(-length // increment) * increment if increment > 0 else length
                rounding += (billed if billed > minimum else minimum) - length
        low, high = begin, end
    if high >= 0:
        busy += high - low
        if per_stretch:
            length = high - low + (startup if joined and low == ready_ns else 0)
            billed = -(-length // increment) * increment if increment > 0 else length
            rounding += (billed if billed > minimum else minimum) - length
    return busy, rounding, joined


def _totals(
    wall_ns: dict[Category, int], gpu_count: int, rules: Rules, requests: int, stop_ns: int
) -> WorkerBill:
    """A bill of totals only, from wall nanoseconds per category."""
    rate_per_gpu_ns = rules.usd_per_gpu_ns(gpu_count)
    gpu_ns: dict[Category, Fraction] = {
        category: Fraction(ns * gpu_count) for category, ns in wall_ns.items()
    }
    usd: dict[Category, Fraction] = {
        category: amount * rate_per_gpu_ns for category, amount in gpu_ns.items()
    }
    usd["fee"] = rules.execution_fee_usd * requests if rules.execution_fee_usd else Fraction(0)
    billed = sum(gpu_ns.values(), Fraction(0))
    return WorkerBill(
        lines=(),
        total_usd=sum(usd.values(), Fraction(0)),
        billed_gpu_ns=billed,
        usd_by_category=usd,
        gpu_ns_by_category=gpu_ns,
        stop_ns=stop_ns,
        usd_by_resource=_by_resource(rules, gpu_count, billed),
    )


def _by_resource(rules: Rules, gpu_count: int, billed_gpu_ns: Fraction) -> dict[Resource, Fraction]:
    """The dollars of ``billed_gpu_ns`` per resource."""
    return {
        resource: rate * billed_gpu_ns / NS_PER_S
        for resource, rate in rules.per_gpu_second_by_resource(gpu_count).items()
    }


def _request_lines(
    requests: Sequence[Request],
    served: Sequence[tuple[int, int]],
    gpus: int,
    rate_per_gpu_ns: Fraction,
) -> list[Line]:
    """The ``request`` lines: each stretch of constant concurrency split equally among the
    requests running in it; a request's own start-up work (its first ``startup_ns`` of wall
    time) relabelled ``startup``."""
    out: list[Line] = []
    startup_left = {r.request_id: r.startup_ns for r in requests if r.startup_ns > 0}
    for start, end, running in _segments(requests, served):
        # A whole number of GPU-ns stays an int (most stretches run one request): cheap to add.
        whole, left = divmod((end - start) * gpus, len(running))
        share: int | Fraction = whole if not left else Fraction((end - start) * gpus, len(running))
        for request_id in running:
            left = startup_left.get(request_id, 0)
            if left <= 0:
                out.append(Line("request", start, end, share, rate_per_gpu_ns, request_id))
                continue
            cut = min(end, start + left)
            startup_left[request_id] = left - (cut - start)
            first = share * Fraction(cut - start, end - start)
            out.append(Line("startup", start, cut, first, rate_per_gpu_ns, request_id))
            if cut < end:
                rest = share - first
                out.append(Line("request", cut, end, rest, rate_per_gpu_ns, request_id))
    return out


# --- helpers -------------------------------------------------------------------------------------


def _decimal(value: float) -> Fraction:
    """``value`` as the shortest decimal that reads back as it (``repr``), exactly."""
    return Fraction(repr(float(value)))


def _reservation(unit_usd: float, reserved: float | None, minimum: float) -> Fraction:
    """A worker's price per second for a resource charged per unit-second (0: not charged):
    the reservation or the platform's minimum, whichever is higher (None: the minimum)."""
    if not unit_usd:
        return Fraction(0)
    if reserved is not None and not reserved > 0:
        raise ValueError(f"a reservation must be above 0, got {reserved!r}")
    units = _decimal(minimum) if reserved is None else max(_decimal(reserved), _decimal(minimum))
    return units * _decimal(unit_usd)


def _time_line(
    category: Category, start: int, end: int, gpus: int, rate_per_gpu_ns: Fraction
) -> Line:
    return Line(category, start, end, (end - start) * gpus, rate_per_gpu_ns)


def rounded_ns(duration_ns: int, rules: Rules) -> int:
    """A billing span's time as the platform bills it: up to the increment, at least the
    minimum."""
    billed = duration_ns
    increment = rules.increment_ns
    if increment > 0:
        billed = -(-billed // increment) * increment
    return max(billed, rules.minimum_ns)


def _union(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The disjoint, sorted stretches covered by ``intervals`` (empty ones dropped)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(each for each in intervals if each[1] > each[0]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _clip(stretches: Sequence[tuple[int, int]], low: int, high: int) -> list[tuple[int, int]]:
    return [(max(a, low), min(b, high)) for a, b in stretches if min(b, high) > max(a, low)]


def _gaps(stretches: Sequence[tuple[int, int]], low: int, high: int) -> list[tuple[int, int]]:
    """``[low, high)`` less ``stretches`` (sorted, disjoint, inside it)."""
    gaps: list[tuple[int, int]] = []
    cursor = low
    for start, end in stretches:
        if start > cursor:
            gaps.append((cursor, start))
        cursor = max(cursor, end)
    if high > cursor:
        gaps.append((cursor, high))
    return gaps


def _segments(
    requests: Sequence[Request], served: Sequence[tuple[int, int]]
) -> list[tuple[int, int, tuple[str, ...]]]:
    """Within ``served``, the stretches of constant concurrency and the requests running in
    each (ordered by request start, then id). A sweep: linear in the output, not quadratic."""
    ordered = sorted(requests, key=lambda r: (r.start_ns, r.request_id))
    if all(b.start_ns >= a.end_ns for a, b in itertools.pairwise(ordered)):
        return _lone_segments(ordered, served)
    return _swept_segments(ordered, served)


def _swept_segments(
    ordered: Sequence[Request], served: Sequence[tuple[int, int]]
) -> list[tuple[int, int, tuple[str, ...]]]:
    """:func:`_segments` by a sweep over every edge (requests ordered by start, then id)."""
    edges = sorted(
        {edge for start, end in served for edge in (start, end)}
        | {edge for r in ordered for edge in (r.start_ns, r.end_ns)}
    )
    segments: list[tuple[int, int, tuple[str, ...]]] = []
    running: list[Request] = []
    joined = 0
    stretch = 0
    for start, end in itertools.pairwise(edges):
        while joined < len(ordered) and ordered[joined].start_ns <= start:
            running.append(ordered[joined])
            joined += 1
        running = [r for r in running if r.end_ns > start]
        while stretch < len(served) and served[stretch][1] <= start:
            stretch += 1
        if stretch == len(served) or served[stretch][0] > start or not running:
            continue
        # Every edge is a boundary, so a request running at ``start`` runs to ``end``.
        segments.append((start, end, tuple(r.request_id for r in running)))
    return segments


def _lone_segments(
    ordered: Sequence[Request], served: Sequence[tuple[int, int]]
) -> list[tuple[int, int, tuple[str, ...]]]:
    """:func:`_segments` where no two requests overlap (one at a time, the common case): each
    request is one stretch, its part inside the served stretch that holds it (a request lies
    within one busy stretch; clipping to ready and stop only trims its ends)."""
    segments: list[tuple[int, int, tuple[str, ...]]] = []
    stretch = 0
    count = len(served)
    for request in ordered:
        start, end = request.start_ns, request.end_ns
        while stretch < count and served[stretch][1] <= start:
            stretch += 1
        if stretch == count:
            break
        low, high = served[stretch]
        start = max(start, low)
        end = min(end, high)
        if end > start:
            segments.append((start, end, (request.request_id,)))
    return segments


def allocate(amounts: Sequence[Fraction]) -> list[int]:
    """Integers, one per amount, each its floor or ceiling, summing to the rounded total."""
    floors = [amount.numerator // amount.denominator for amount in amounts]
    total = sum(amounts, Fraction(0))
    target = round(total)
    spare = target - sum(floors)
    order = sorted(range(len(amounts)), key=lambda i: amounts[i] - floors[i], reverse=True)
    result = list(floors)
    for index in order[: max(spare, 0)]:
        result[index] += 1
    return result
