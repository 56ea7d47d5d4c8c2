"""From recorded invocations to worker bills, and each bill's dollars back to requests.

:func:`workers_of` rebuilds each billing worker's timeline from its records (the container a
platform bills: records sharing ``billing_worker``, whatever process wrote them), with the
billing rules frozen on the records (or other rules, to re-price the same traffic).
:func:`attribute` splits one worker's bill among its requests under a policy chosen at report
time, and what no request takes goes to the worker's idle charges:

- ``separate`` (the default): a request is charged its fee, its own share of the time it ran
  (start-up work it did itself included), and the worker's start-up if it is the request that
  waited for it (the worker's first). Idle time and rounding are the worker's own, shown as a
  row of their own (``(idle)``, as OpenCost shows ``__idle__``).
- ``share``: as ``separate``, then idle time and rounding are shared among the worker's requests
  pro rata to each one's share of the time the worker was busy.
- ``cause``: as ``separate``, then each idle stretch goes to the request whose keep-warm window
  it was (the last to end before it; idle before the first request to that first request), and
  each billing span's rounding to the request that ended the span.

Every split is exact (:class:`~fractions.Fraction`), so the charges of a worker's requests and
its idle charges add up to its bill exactly, whatever the policy. A charge's time carries the
worker's rates per GPU-second for each resource it pays for (GPU, and the worker's CPU and memory
where the platform charges them: :func:`rate_key`), so its dollars are known per resource too.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from fractions import Fraction
from typing import Any, Final, Protocol

from gpuledger._record import InvocationRecord
from gpuledger.billing._engine import (
    NS_PER_S,
    RESOURCES,
    Category,
    Line,
    Request,
    Resource,
    Rules,
    WorkerBill,
    WorkerTimeline,
    bill,
    bill_lines,
)

__all__ = [
    "IDLE_KEY",
    "POLICIES",
    "Billed",
    "Charges",
    "Worker",
    "as_recorded",
    "attribute",
    "bill_workers",
    "charge_into",
    "frozen_rules",
    "owned_lines",
    "rate_key",
    "worker_key",
    "worker_lines",
    "worker_of",
    "worker_rules",
    "workers_of",
]

POLICIES: Final = ("separate", "share", "cause")
"""How a worker's idle time and rounding are attributed (see the module docstring)."""
IDLE_KEY: Final = "(idle)"
"""The report row of what no request was charged under ``separate``."""
TIME_CATEGORIES: Final[tuple[Category, ...]] = ("request", "startup", "idle", "rounding")


class Billed(Protocol):
    """What billing reads of a record: an :class:`InvocationRecord`, or a row of these fields
    alone (a report over a large ledger fetches no more)."""

    @property
    def record_id(self) -> str: ...
    @property
    def start_ns(self) -> int: ...
    @property
    def end_ns(self) -> int: ...
    @property
    def request_startup_s(self) -> float | None: ...
    @property
    def worker_start_ns(self) -> int | None: ...
    @property
    def worker_ready_ns(self) -> int | None: ...
    @property
    def cold(self) -> bool: ...
    @property
    def init_duration_s(self) -> float | None: ...
    @property
    def gpu_count(self) -> int: ...
    @property
    def cost_usd(self) -> float | None: ...
    @property
    def cost_execution_usd(self) -> float | None: ...
    @property
    def cost_coldstart_usd(self) -> float | None: ...
    @property
    def pricing_version(self) -> str | None: ...
    @property
    def outcome(self) -> str: ...


RulesFor = Callable[[InvocationRecord], "tuple[Rules | None, str | None]"]
"""``rules_for(record) -> (rules, pricing version)``: the rules to bill a worker by, asked of
its first record."""


_SLOT: Final[dict[Category, int]] = {"request": 0, "startup": 1, "idle": 2, "rounding": 3}
_UNKNOWN_RATE: Final = Fraction(-1)
"""The rate of charges taken as recorded: none known (a row holding them has no single rate)."""
RateKey = tuple[int, ...]
"""A GPU rate as ``(numerator, denominator)``; where the worker's CPU and memory are charged
too, ``(gpu numerator, gpu denominator, cpu numerator, cpu denominator, memory numerator,
memory denominator)``. Each rate is US dollars per GPU-second (for CPU and memory: the worker's
price per second over the GPUs it holds)."""
_UNKNOWN_KEY: Final[RateKey] = (-1, 1)
_ZERO: Final = Fraction(0)


def rate_key(rate: Fraction, cpu: Fraction = _ZERO, memory: Fraction = _ZERO) -> RateKey:
    """The rates of a GPU-second (GPU, and the worker's CPU and memory per GPU-second) as a
    key that hashes fast: two integers where the GPU alone is charged, six otherwise."""
    if not cpu and not memory:
        return rate.numerator, rate.denominator
    return (
        rate.numerator,
        rate.denominator,
        cpu.numerator,
        cpu.denominator,
        memory.numerator,
        memory.denominator,
    )


def _key_rates(key: RateKey) -> tuple[Fraction, Fraction, Fraction]:
    """The GPU, CPU and memory rates per GPU-second of a :func:`rate_key`."""
    if len(key) == 2:  # the GPU alone
        return Fraction(key[0], key[1]), _ZERO, _ZERO
    return Fraction(key[0], key[1]), Fraction(key[2], key[3]), Fraction(key[4], key[5])


class Charges:
    """Exact charges: GPU-nanoseconds per category at each rate they were billed at (dollars are
    rate x time, worked out when asked, per resource: GPU, CPU, memory), fees counted per
    amount, and amounts taken as recorded kept apart. Adding charges up (a report sums one per
    invocation) is then integer arithmetic wherever the time is whole nanoseconds, which it is
    unless concurrent requests split it."""

    __slots__ = ("_fees", "_recorded", "_time", "versions")

    def __init__(self, versions: set[str] | None = None) -> None:
        self._time: dict[RateKey, list[int | Fraction]] = {}
        """Rates per GPU-second (:func:`rate_key`: a tuple hashes fast, a Fraction does not)
        -> GPU-ns of request, startup, idle, rounding."""
        self._fees: dict[RateKey, int] = {}
        """A fee (numerator, denominator) -> how many were charged."""
        self._recorded: dict[Category, Fraction] = {}
        self.versions: set[str] = versions if versions is not None else set()

    def add_time(self, rate: RateKey, category: Category, gpu_ns: int | Fraction) -> None:
        """``gpu_ns`` GPU-nanoseconds of ``category`` billed at ``rate`` a GPU-second
        (:func:`rate_key`: the GPU's, and the worker's CPU and memory)."""
        slots = self._time.get(rate)
        if slots is None:
            slots = self._time[rate] = [0, 0, 0, 0]
        slots[_SLOT[category]] += gpu_ns

    def add_fee(self, amount: Fraction | RateKey, count: int = 1) -> None:
        """``count`` fees of ``amount`` (or its :func:`rate_key`)."""
        key = amount if isinstance(amount, tuple) else (amount.numerator, amount.denominator)
        self._fees[key] = self._fees.get(key, 0) + count

    def add_recorded(self, category: Category, usd: Fraction) -> None:
        """Dollars taken as a record carries them (no rate known)."""
        self._recorded[category] = self._recorded.get(category, Fraction(0)) + usd

    def merge(self, other: Charges) -> None:
        for rate, theirs in other._time.items():
            mine = self._time.get(rate)
            if mine is None:
                self._time[rate] = list(theirs)
            else:
                mine[0] += theirs[0]
                mine[1] += theirs[1]
                mine[2] += theirs[2]
                mine[3] += theirs[3]
        for key, count in other._fees.items():
            self._fees[key] = self._fees.get(key, 0) + count
        for category, usd in other._recorded.items():
            self.add_recorded(category, usd)
        self.versions |= other.versions

    @property
    def rates(self) -> set[Fraction]:
        """The GPU rates billed (per GPU-second; the CPU and memory a worker may also pay for
        are not in them); -1 stands for amounts taken as recorded."""
        rates = {Fraction(key[0], key[1]) for key in self._time}
        if self._recorded:
            rates.add(_UNKNOWN_RATE)
        return rates

    @property
    def gpu_ns(self) -> dict[Category, Fraction]:
        """GPU-nanoseconds per time category."""
        totals: dict[Category, Fraction] = dict.fromkeys(TIME_CATEGORIES, Fraction(0))
        for slots in self._time.values():
            for category, index in _SLOT.items():
                totals[category] += slots[index]
        return totals

    @property
    def usd(self) -> dict[Category, Fraction]:
        """US dollars per category, fees included (every resource: GPU, CPU, memory)."""
        totals: dict[Category, Fraction] = dict.fromkeys((*TIME_CATEGORIES, "fee"), Fraction(0))
        for key, slots in self._time.items():
            if key == _UNKNOWN_KEY:  # time of amounts taken as recorded: priced there
                continue
            rate = sum(_key_rates(key), _ZERO)
            for category, index in _SLOT.items():
                if slots[index]:
                    totals[category] += rate * slots[index] / NS_PER_S
        for key, count in self._fees.items():
            totals["fee"] += Fraction(*key) * count
        for category, usd in self._recorded.items():
            totals[category] += usd
        return totals

    @property
    def usd_by_resource(self) -> dict[Resource, Fraction]:
        """US dollars of billed time per resource (``gpu``, ``cpu``, ``memory``), fees apart:
        with ``usd["fee"]`` they add up to :attr:`total_usd`. Amounts taken as recorded (no
        rate known: records priced before CPU and memory were) count as GPU."""
        totals: dict[Resource, Fraction] = dict.fromkeys(RESOURCES, _ZERO)
        for key, slots in self._time.items():
            if key == _UNKNOWN_KEY:
                continue
            gpu_ns = slots[0] + slots[1] + slots[2] + slots[3]
            if not gpu_ns:
                continue
            for resource, rate in zip(RESOURCES, _key_rates(key), strict=True):
                if rate:
                    totals[resource] += rate * gpu_ns / NS_PER_S
        for category, usd in self._recorded.items():
            if category != "fee":
                totals["gpu"] += usd
        return totals

    @property
    def total_usd(self) -> Fraction:
        return sum(self.usd.values(), Fraction(0))

    def charged(self) -> bool:
        """Whether anything was charged: GPU time, a fee of some amount, or dollars taken as
        recorded (``total_usd or billed_gpu_ns``, without working out dollars)."""
        return (
            any(any(slots) for slots in self._time.values())
            or any(count and key[0] for key, count in self._fees.items())
            or any(self._recorded.values())
        )

    @property
    def billed_gpu_ns(self) -> Fraction:
        return sum(self.gpu_ns.values(), Fraction(0))


@dataclasses.dataclass(frozen=True, slots=True)
class Worker:
    """One billing worker as its records show it."""

    key: str
    timeline: WorkerTimeline
    rules: Rules | None
    """None: no price known for its platform and GPU (its records are unpriced)."""
    pricing_version: str | None
    stop_inferred: bool
    """Its stop is the platform's idle rule applied after its last request, not observed."""
    record_ids: tuple[str, ...]


def worker_key(record: InvocationRecord) -> str:
    """The billing worker of ``record``: its container (``billing_worker``), else, for records
    written before gpuledger knew containers, its process (``worker_id``), else itself."""
    return record.billing_worker or record.worker_id or f"record:{record.record_id}"


def frozen_rules(record: InvocationRecord) -> tuple[Rules | None, str | None]:
    """The rules frozen on ``record`` when its worker started, and its pricing version."""
    frozen = record.billing_rules
    if frozen is None:
        return None, None
    try:
        key = tuple(sorted(frozen.items()))
        hash(key)
    except TypeError:  # not the flat mapping to_json writes: read it as it is
        return Rules.from_json(frozen), record.pricing_version
    return _rules_of(key), record.pricing_version


@functools.lru_cache(maxsize=256)
def _rules_of(frozen: tuple[tuple[str, Any], ...]) -> Rules:
    """Rules read once per distinct frozen text: a fleet's workers share a handful (Rules
    are immutable), and reading one is a dozen exact fractions."""
    return Rules.from_json(dict(frozen))


def workers_of(
    records: Iterable[InvocationRecord],
    *,
    rules_for: RulesFor = frozen_rules,
    fallback: RulesFor | None = None,
    stops: Mapping[str, int] | None = None,
) -> list[Worker]:
    """The billing workers of ``records``, each with its timeline and rules.

    ``rules_for`` gives a worker's rules from its first record (default: the rules frozen on
    it); where it gives none, ``fallback`` is asked (records written before rules were frozen).
    A worker's start is its container's or process's start as recorded (for older records, its
    cold request's start less its init); its stop is the one observed (``stops``: per worker, the
    latest stop of its processes, ``Ledger.read_stops``) when that is at or after its last
    request's end, else inferred: the last request's end plus the platform's idle window where
    the platform bills a warm worker's idle time.
    """
    grouped: dict[str, list[InvocationRecord]] = {}
    for record in records:
        grouped.setdefault(worker_key(record), []).append(record)
    workers = []
    for key, members in grouped.items():
        members.sort(key=lambda record: (record.start_ns, record.record_id))
        rules, version = worker_rules(members[0], rules_for, fallback)
        observed = None if stops is None else stops.get(key)
        workers.append(worker_of(key, members, rules, version, observed))
    return workers


def worker_rules(
    first: InvocationRecord, rules_for: RulesFor, fallback: RulesFor | None = None
) -> tuple[Rules | None, str | None]:
    """The rules a worker is billed by, asked of its ``first`` record: ``rules_for``'s, else
    ``fallback``'s (records written before rules were frozen)."""
    rules, version = rules_for(first)
    if rules is None and fallback is not None:
        rules, version = fallback(first)
    return rules, version


def worker_of(
    key: str,
    records: Sequence[Billed],
    rules: Rules | None,
    version: str | None,
    observed_stop: int | None,
) -> Worker:
    """One billing worker from its records in order (``start_ns``, then ``record_id``), billed
    by ``rules``; its stop as :func:`workers_of` says."""
    requests = []
    for record in records:
        if record.outcome == "rejected":  # refused before it ran: the worker's time, not its
            continue
        end = max(record.end_ns, record.start_ns)
        startup = 0
        if record.request_startup_s:
            startup = min(end - record.start_ns, round(record.request_startup_s * NS_PER_S))
        requests.append(Request(record.record_id, record.start_ns, end, startup))
    first_start = min(record.start_ns for record in records)
    last_end = max(max(record.end_ns, record.start_ns) for record in records)
    starts = [r.worker_start_ns for r in records if r.worker_start_ns is not None]
    readies = [r.worker_ready_ns for r in records if r.worker_ready_ns is not None]
    if starts:
        start = min(starts)
    else:  # written before gpuledger recorded the worker's start: its cold request's init
        start = min(
            (
                r.start_ns - round(r.init_duration_s * NS_PER_S)
                for r in records
                if r.cold and r.init_duration_s is not None
            ),
            default=first_start,
        )
    start = min(start, first_start)
    ready = min(readies) if readies else min((r.start_ns for r in records if r.cold), default=start)
    ready = max(start, min(ready, first_start))
    stop = last_end
    inferred = True
    if observed_stop is not None and observed_stop >= last_end:
        stop, inferred = observed_stop, False
    elif rules is not None and rules.bills_idle and not rules.reserved and rules.idle_window_ns:
        stop = last_end + rules.idle_window_ns
    timeline = WorkerTimeline(
        start_ns=start,
        ready_ns=ready,
        stop_ns=stop,
        requests=tuple(requests),
        gpu_count=max(1, *(record.gpu_count for record in records)),
    )
    return Worker(
        key=key,
        timeline=timeline,
        rules=rules,
        pricing_version=version,
        stop_inferred=inferred,
        record_ids=tuple(record.record_id for record in records),
    )


_UNPRICED: Final = Rules(per_gpu_second_usd=Fraction(0))
"""How an unpriced worker's time is still counted: its requests' own time, nothing added."""


def worker_lines(worker: Worker) -> tuple[Line, ...]:
    """The lines of the worker's bill (an unpriced worker's: its requests' time at no rate),
    without the bill's totals (:func:`gpuledger.billing.bill_lines`)."""
    return bill_lines(worker.timeline, worker.rules or _UNPRICED)


def bill_workers(workers: Iterable[Worker]) -> Iterable[tuple[Worker, WorkerBill]]:
    """Each worker with its bill (an unpriced worker's: its requests' time at no rate)."""
    for worker in workers:
        yield worker, bill(worker.timeline, worker.rules or _UNPRICED)


def as_recorded(record: Billed, gpu_ns: int | Fraction = 0) -> Charges | None:
    """The charges a record carries itself (its fee and the rest), for a worker there are no
    rules to bill by (written before rules were frozen, its price gone from the catalogue);
    None when it was unpriced. ``gpu_ns`` is its own GPU time (its rate is not known)."""
    if record.cost_usd is None or not math.isfinite(record.cost_usd):
        return None
    charges = Charges(versions={record.pricing_version} if record.pricing_version else set())
    fee = Fraction(record.cost_execution_usd or 0.0)
    startup_usd = Fraction(record.cost_coldstart_usd or 0.0)
    if fee:
        charges.add_fee(fee)
    charges.add_recorded("request", Fraction(record.cost_usd) - fee - startup_usd)
    if startup_usd:
        charges.add_recorded("startup", startup_usd)
    charges.add_time(_UNKNOWN_KEY, "request", gpu_ns)  # its time, at no known rate
    return charges


def attribute(
    worker: Worker, worker_bill: WorkerBill | Sequence[Line], policy: str = "separate"
) -> tuple[dict[str, Charges], Charges]:
    """``worker_bill`` split among the worker's requests under ``policy``: the charges of each
    request (by record id) and what stays the worker's own (its idle charges). Together they
    add up to the bill exactly."""
    versions = {worker.pricing_version} if worker.pricing_version else set()
    per_request: dict[str, Charges] = {
        record_id: Charges(set(versions)) for record_id in worker.record_ids
    }  # a refused (rejected) record is no request: its charges stay empty
    idle = Charges(set(versions))
    charge_into(
        worker,
        worker_bill,
        policy,
        lambda owner_id: idle if owner_id is None else per_request[owner_id],
    )
    return per_request, idle


def charge_into(
    worker: Worker,
    worker_bill: WorkerBill | Sequence[Line],
    policy: str,
    owner: Callable[[str | None], Charges],
) -> None:
    """Add ``worker_bill``, split under ``policy``, to the charges ``owner(request id)`` gives
    (``owner(None)``: the worker's own), which may be shared: a report adds each request's part
    straight into its group's charges instead of making one :class:`Charges` per request. The
    charges' ``versions`` are the caller's to set. :func:`attribute` is this with one per
    request."""
    rates = (worker.rules or _UNPRICED).per_gpu_second_by_resource(worker.timeline.gpu_count)
    rate = rate_key(rates["gpu"], rates["cpu"], rates["memory"])
    # Every fee line of a bill is the rules' fee: its key made once.
    fee = rate_key((worker.rules or _UNPRICED).execution_fee_usd)
    for owner_id, line, gpu_ns in owned_lines(worker, worker_bill, policy):
        charges = owner(owner_id)
        if line.category == "fee":
            charges.add_fee(fee)
        else:
            charges.add_time(rate, line.category, gpu_ns)


def owned_lines(
    worker: Worker, worker_bill: WorkerBill | Sequence[Line], policy: str = "separate"
) -> Iterator[tuple[str | None, Line, int | Fraction]]:
    """Each line of ``worker_bill`` (or part of one; or of the lines given alone) with the
    request it is charged to under ``policy`` (None: the worker's own) and the GPU-nanoseconds
    charged to it there (0 for a fee). :func:`attribute` sums these; a report per period splits
    the lines by time first."""
    if policy not in POLICIES:
        raise ValueError(f"no attribution policy {policy!r}: choose one of {', '.join(POLICIES)}")
    requests = worker.timeline.requests
    first = min(requests, key=lambda r: (r.start_ns, r.request_id), default=None)
    shared: list[Line] = []
    busy: dict[str, int | Fraction] = dict.fromkeys((request.request_id for request in requests), 0)
    bill_lines = worker_bill.lines if isinstance(worker_bill, WorkerBill) else worker_bill
    for line in bill_lines:
        if line.category == "fee":
            yield line.request_id, line, 0
        elif line.request_id is not None:  # request, start-up done inside the request
            yield line.request_id, line, line.gpu_ns
            busy[line.request_id] += line.gpu_ns  # its time running, start-up work included
        elif line.category == "startup" and first is not None:
            yield first.request_id, line, line.gpu_ns
        elif policy == "separate" or first is None:
            yield None, line, line.gpu_ns
        else:
            shared.append(line)
    if policy == "share":
        yield from _share(shared, requests, busy)
    elif policy == "cause":
        ends = sorted((request.end_ns, request.request_id) for request in requests)
        for line in shared:
            # Idle: the request whose keep-warm window it was; rounding (starting at its span's
            # end): the request that ended the span.
            index = bisect.bisect_right(ends, (line.start_ns, "\U0010ffff")) - 1
            owner_id = ends[index][1] if index >= 0 else first.request_id  # type: ignore[union-attr]
            yield owner_id, line, line.gpu_ns


def _share(
    lines: Sequence[Line], requests: Sequence[Request], busy: dict[str, int | Fraction]
) -> Iterator[tuple[str, Line, Fraction]]:
    """Spread ``lines`` over the requests pro rata to each one's busy time (``busy``: its GPU
    time running; equally when none ran)."""
    if not lines:
        return
    weights = {request_id: Fraction(value) for request_id, value in busy.items()}
    total = sum(weights.values(), Fraction(0))
    if total == 0:
        weights = dict.fromkeys(weights, Fraction(1))
        total = Fraction(len(weights))
    for line in lines:
        for request in requests:
            part = weights[request.request_id] / total
            if part:
                yield request.request_id, line, line.gpu_ns * part
