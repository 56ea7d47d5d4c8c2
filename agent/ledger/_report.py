"""Reports over ledger records: chargeback and usage per user, tenant, endpoint, platform or day.

Pure functions over :class:`InvocationRecord`; reading the ledger and printing are the CLI's job.
Dollars are the workers' bills (``gpuledger.billing``): each billing worker's timeline is billed
under its platform's rules (frozen on its records, or other rules to re-price), and the bill is
attributed to its requests under a policy; what no request is charged (idle time, rounding,
under ``separate``) is a row of its own, ``(idle)``. So the rows add up to the bills, and each
row reads on its face: ``cost_usd = fee_usd + gpu_usd + cpu_usd + memory_usd`` and ``gpu_usd =
rate_usd_per_gpu_s x billed_gpu_s``, with ``billed_gpu_s`` the sum of its parts (request,
startup, idle, rounding); ``cpu_usd`` and ``memory_usd`` are the workers' CPU and memory over
the same billed time, where the platform charges them (Modal), else 0.

Unknown stays unknown: a group in which no record has a busy-GPU measurement, a price or a token
count reports ``None`` for it, never zero, and ``unpriced`` says how many records a cost total
leaves out.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final

from gpuledger._record import InvocationRecord
from gpuledger.billing import (
    IDLE_KEY,
    Charges,
    as_recorded,
    attribute,
    bill_workers,
    frozen_rules,
    workers_of,
)

if TYPE_CHECKING:
    from gpuledger.billing import Rules

RulesFor = Callable[[InvocationRecord], "tuple[Rules | None, str | None]"]

__all__ = [
    "GROUP_BY",
    "IDLE_KEY",
    "NO_KEY",
    "REPORT_COLUMNS",
    "ReportRow",
    "aggregate",
    "parse_since",
    "totals",
]

GROUP_BY: Final = (
    "user",
    "tenant",
    "endpoint",
    "platform",
    "version",
    "model",
    "day",
    "invocation",
    "target",
)
"""What a report can group by."""
NO_KEY: Final = "(none)"
"""The group of records that carry no user, tenant or endpoint."""
TOTAL_KEY: Final = "TOTAL"

_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$", re.IGNORECASE)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


SCALE: Final = 1_000_000_000
"""Measured floats (seconds, joules, dollars) are summed as integers of ``1 / SCALE`` of their
unit: :func:`fixed` in Python, :func:`fixed_sql` in the database, the same arithmetic, so that a
sum is exact whatever the order and the same wherever it is computed."""


def fixed(value: float | None) -> int | None:
    """``value`` in integers of ``1 / SCALE`` (half away from zero's cousin: ``+ 0.5`` then
    truncated toward zero, as SQL's ``CAST(... AS INTEGER)`` does); None for None, NaN and
    infinities (the ledger stores NaN as NULL, which sums skip)."""
    if value is None or not math.isfinite(value):
        return None
    return int(value * 1e9 + 0.5)


@dataclasses.dataclass(slots=True)
class Measures:
    """What a group's records measured: counts, and sums of :func:`fixed` values with how many
    records had one. The database computes the same (``gpuledger.ledger._query``)."""

    invocations: int = 0
    cold_starts: int = 0
    errors: int = 0
    init_n: int = 0
    init_sum: int = 0
    busy_n: int = 0
    busy_sum: int = 0
    busy_billed_sum: int = 0
    energy_n: int = 0
    energy_sum: int = 0
    calls_n: int = 0
    calls_sum: int = 0
    wait_n: int = 0
    wait_sum: int = 0
    wait_cost_n: int = 0
    wait_cost_sum: int = 0
    input_n: int = 0
    input_sum: int = 0
    output_n: int = 0
    output_sum: int = 0
    rejected: int = 0
    first_n: int = 0
    first_sum: int = 0

    def merge(self, other: Measures) -> None:
        for name in _MEASURE_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def add(self, record: InvocationRecord, entry: Mapping[str, Any] | None = None) -> None:
        """One record; ``entry``, grouped by target: that target's calls instead of all."""
        self.invocations += 1
        if record.cold:
            self.cold_starts += 1
            if (init := fixed(record.init_duration_s)) is not None:
                self.init_n += 1
                self.init_sum += init
        if record.outcome == "rejected":
            self.rejected += 1
        elif record.outcome != "ok":
            self.errors += 1
        if (first := fixed(record.first_item_s)) is not None:
            self.first_n += 1
            self.first_sum += first
        if (busy := fixed(record.busy_gpu_seconds)) is not None:
            self.busy_n += 1
            self.busy_sum += busy
            self.busy_billed_sum += fixed(record.billed_gpu_seconds) or 0
        if (energy := fixed(record.energy_j)) is not None:
            self.energy_n += 1
            self.energy_sum += energy
        if entry is not None:
            self.calls_n += 1
            self.calls_sum += int(entry.get("calls", 0))
            if (wait := fixed(float(entry.get("wait_s", 0.0)))) is not None:
                self.wait_n += 1
                self.wait_sum += wait
            if "wait_usd" in entry and (cost := fixed(float(entry["wait_usd"]))) is not None:
                self.wait_cost_n += 1
                self.wait_cost_sum += cost
        elif record.external_calls is not None:
            self.calls_n += 1
            self.calls_sum += record.external_calls
            if (wait := fixed(record.external_wait_seconds)) is not None:
                self.wait_n += 1
                self.wait_sum += wait
            if (cost := fixed(record.external_wait_cost_usd)) is not None:
                self.wait_cost_n += 1
                self.wait_cost_sum += cost
        if record.input_tokens is not None:
            self.input_n += 1
            self.input_sum += record.input_tokens
        if record.output_tokens is not None:
            self.output_n += 1
            self.output_sum += record.output_tokens


_MEASURE_FIELDS: Final = tuple(field.name for field in dataclasses.fields(Measures))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ReportRow:
    """One group of a report (or the TOTAL). Seconds, US dollars; None means unknown."""

    key: str
    invocations: int
    cold_starts: int
    cold_start_share: float
    """cold_starts / invocations, 0 to 1."""
    mean_init_s: float | None
    """Mean init duration over the cold requests that measured one."""
    errors: int
    """Requests that failed (error, timeout, killed, cancelled)."""
    rejected: int
    """Requests refused before their handler ran (an enforced budget): no GPU time, no request
    charge."""
    request_gpu_s: float
    """GPU time the requests ran (their shares where they overlapped), start-up work they did
    themselves excluded."""
    startup_gpu_s: float
    """Start-up billed: the worker's, charged to the request that waited for it, and start-up
    work requests did themselves (a model loaded lazily)."""
    idle_gpu_s: float
    """A warm worker's idle time, where the platform bills it."""
    rounding_gpu_s: float
    """What the platform's increment and minimum added to the workers' billing spans."""
    billed_gpu_s: float
    """GPU time charged: the four above."""
    fee_usd: float | None
    """Per-request fees."""
    gpu_usd: float | None
    """The GPU time: ``rate_usd_per_gpu_s x billed_gpu_s`` (amounts taken as a record carries
    them, with no rate known, count here)."""
    cpu_usd: float | None
    """The workers' CPU over the same billed time, where the platform charges it (the
    reservation or the platform's minimum); 0 where it does not."""
    memory_usd: float | None
    """The workers' memory over the same billed time, as ``cpu_usd``."""
    rate_usd_per_gpu_s: float | None
    """The rate the GPU time was charged at (the GPU's alone); None when the row mixes rates
    (or is unpriced)."""
    cost_usd: float | None
    """``fee_usd + gpu_usd + cpu_usd + memory_usd``, over the priced records (and, for
    ``(idle)``, the workers' own charges); None when none was priced."""
    pricing_version: str | None
    """The price edition the row was billed under; ``mixed`` when it mixes editions."""
    billed_gpu_seconds: float
    """``billed_gpu_s`` under its old name (kept for one release)."""
    busy_gpu_seconds: float | None
    """Sum over the records that measured it; None when none did."""
    busy_share: float | None
    """Busy over billed GPU seconds, over the records that measured busy: what the GPU time
    paid for was used for; 1 - this is the waste (loading, waiting, idle). None: not measured."""
    energy_j: float | None
    """GPU energy, summed over the records that measured it."""
    external_calls: int | None
    """Outgoing calls (grouped by target: to that target), over the records that counted them."""
    external_wait_s: float | None
    """Wall time spent waiting on at least one outgoing call (per target when grouped by it)."""
    external_wait_cost_usd: float | None
    """What that wait cost at the platform's GPU rate."""
    unpriced: int
    """Records with no price, left out of ``cost_usd``."""
    provisional: int
    """Invocations (for ``(idle)``: workers) whose worker's bill is not final yet: no stop was
    observed and its platform's idle window is not over, so it may be running, and its idle
    time and rounding may still grow."""
    input_tokens: int | None
    output_tokens: int | None
    mean_first_item_s: float | None
    """Streaming handlers: mean time from the start to the first item (time to first token)."""
    duration_p50_s: float
    duration_p95_s: float
    # Kept so that totals() can add groups up exactly: the sums, the charges, and (reports
    # computed in Python) the raw durations for exact percentiles across groups.
    _durations_s: tuple[float, ...] = dataclasses.field(default=(), repr=False, compare=False)
    _measures: Measures = dataclasses.field(default_factory=Measures, repr=False, compare=False)
    _charges: Charges = dataclasses.field(default_factory=Charges, repr=False, compare=False)
    _priced: int = dataclasses.field(default=0, repr=False, compare=False)


def build_row(
    key: str,
    measures: Measures,
    charges: Charges,
    *,
    priced: int,
    unpriced: int,
    provisional: int,
    p50_s: float,
    p95_s: float,
    durations_s: tuple[float, ...] = (),
) -> ReportRow:
    """A group's row from its sums and charges (both ways of computing a report end here)."""
    m = measures
    busy = m.busy_sum / SCALE if m.busy_n else None
    return ReportRow(
        key=key,
        invocations=m.invocations,
        cold_starts=m.cold_starts,
        cold_start_share=m.cold_starts / m.invocations if m.invocations else 0.0,
        mean_init_s=m.init_sum / SCALE / m.init_n if m.init_n else None,
        errors=m.errors,
        rejected=m.rejected,
        **_money(charges, priced=priced),
        busy_gpu_seconds=busy,
        busy_share=_share(busy, m.busy_billed_sum / SCALE),
        energy_j=m.energy_sum / SCALE if m.energy_n else None,
        external_calls=m.calls_sum if m.calls_n else None,
        external_wait_s=m.wait_sum / SCALE if m.wait_n else None,
        external_wait_cost_usd=m.wait_cost_sum / SCALE if m.wait_cost_n else None,
        unpriced=unpriced,
        provisional=provisional,
        input_tokens=m.input_sum if m.input_n else None,
        output_tokens=m.output_sum if m.output_n else None,
        mean_first_item_s=m.first_sum / SCALE / m.first_n if m.first_n else None,
        duration_p50_s=p50_s,
        duration_p95_s=p95_s,
        _durations_s=durations_s,
        _measures=measures,
        _charges=charges,
        _priced=priced,
    )


REPORT_COLUMNS: Final = tuple(
    field.name for field in dataclasses.fields(ReportRow) if not field.name.startswith("_")
)
"""The public columns of a :class:`ReportRow`, in order (what JSON and CSV output carry)."""


def parse_since(text: str, *, now_ns: int) -> int:
    """The start instant (Unix ns) that ``text`` names, relative to ``now_ns``.

    ``text`` is a duration back from now (``90s``, ``30m``, ``24h``, ``7d``, ``2w``; decimals
    allowed) or an ISO date or date-time (``2026-03-01``, ``2026-03-01T12:00:00Z``); a date or a
    date-time without an offset is read as UTC. Raises :class:`ValueError` on anything else.
    """
    cleaned = text.strip()
    match = _DURATION.match(cleaned)
    if match is not None:
        amount, unit = match.groups()
        back_ns = Fraction(amount) * _UNIT_SECONDS[unit.lower()] * 1_000_000_000
        return now_ns - int(back_ns)
    try:
        instant = dt.datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a start time: give a duration back from now "
            "(90s, 30m, 24h, 7d, 2w) or an ISO date or date-time (2026-03-01, "
            "2026-03-01T12:00:00Z)"
        ) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=dt.UTC)
    return (instant - _EPOCH) // dt.timedelta(microseconds=1) * 1000


def aggregate(
    records: Iterable[InvocationRecord],
    by: str,
    *,
    policy: str = "separate",
    rules_for: RulesFor = frozen_rules,
    fallback: RulesFor | None = None,
    stops: Mapping[str, int] | None = None,
    now_ns: int | None = None,
) -> list[ReportRow]:
    """Group ``records`` by ``by`` (one of :data:`GROUP_BY`) and summarise each group, with the
    workers' bills attributed under ``policy`` (``gpuledger.billing.POLICIES``).

    ``rules_for`` gives the rules a worker is billed by (default: those frozen on its records;
    another edition re-prices the same traffic), ``fallback`` those of records written before
    rules were frozen; ``stops`` the workers' observed stops (``Ledger.read_stops``). A worker
    whose stop is inferred and still ahead of ``now_ns`` may be running: its requests' charges
    are ``provisional``. Rows are
    sorted by cost, highest first (unpriced groups last), then by
    key; grouped by ``day`` they are in date order instead, as a time series reads.
    """
    if by != "target":
        _key_function(by)  # refuse a bad grouping before reading anything
    listed = list(records)
    charges_of: dict[str, Charges] = {}
    priced: set[str] = set()
    idle = Charges()
    idle_priced = 0
    idle_provisional = 0
    provisional: set[str] = set()
    workers = workers_of(listed, rules_for=rules_for, fallback=fallback, stops=stops)
    by_id = {record.record_id: record for record in listed}
    for worker, worker_bill in bill_workers(workers):
        per_request, own = attribute(worker, worker_bill, policy)
        running = now_ns is not None and worker.stop_inferred and worker.timeline.stop_ns > now_ns
        if running:
            provisional.update(per_request)
        if worker.rules is None:
            # No rules to bill it by: what its records say they cost, if anything.
            for record_id in worker.record_ids:
                own_ns = per_request[record_id].gpu_ns["request"]
                recorded = as_recorded(by_id[record_id], own_ns)
                if recorded is not None:
                    per_request[record_id] = recorded
                    priced.add(record_id)
            charges_of.update(per_request)
            continue
        charges_of.update(per_request)
        if worker.rules is not None:
            priced.update(per_request)
            if own.total_usd or own.billed_gpu_ns:
                idle.merge(own)
                idle_priced += 1
                idle_provisional += running
    tallies: dict[str, _Tally] = {}
    if by == "target":
        # An invocation counts once under each target it called (a row is "the invocations
        # that called it"), with that target's calls and wait; rows do not add up across.
        for record in listed:
            for target in record.external_targets or (NO_KEY,):
                tally = tallies.get(target)
                if tally is None:
                    tally = tallies[target] = _Tally()
                tally.add(
                    record,
                    charges_of[record.record_id],
                    record.record_id in priced,
                    target,
                    provisional=record.record_id in provisional,
                )
    else:
        key_of = _key_function(by)
        for record in listed:
            key = key_of(record)
            tally = tallies.get(key)
            if tally is None:
                tally = tallies[key] = _Tally()
            tally.add(
                record,
                charges_of[record.record_id],
                record.record_id in priced,
                provisional=record.record_id in provisional,
            )
    rows = [tally.row(key) for key, tally in tallies.items()]
    if idle_priced:
        rows.append(idle_row(idle, idle_priced, idle_provisional))
    if by == "day":
        return sorted(rows, key=lambda row: (row.key == IDLE_KEY, row.key))
    return sorted(rows, key=_cost_order)


def totals(
    rows: Sequence[ReportRow], *, p50_s: float | None = None, p95_s: float | None = None
) -> ReportRow:
    """One row, keyed ``TOTAL``, summarising ``rows`` as if their records were one group.

    Its percentiles are those of every duration the rows kept (rows :func:`aggregate` made),
    or ``p50_s`` and ``p95_s`` where given (a report computed in the database works them out
    there: its rows keep no durations)."""
    durations = sorted(duration for row in rows for duration in row._durations_s)
    measures = Measures()
    charges = Charges()
    for row in rows:
        measures.merge(row._measures)
        charges.merge(row._charges)
    return build_row(
        TOTAL_KEY,
        measures,
        charges,
        priced=sum(row._priced for row in rows),
        unpriced=sum(row.unpriced for row in rows),
        provisional=sum(row.provisional for row in rows if row.key != IDLE_KEY),
        p50_s=_percentile(durations, 0.50) if p50_s is None else p50_s,
        p95_s=_percentile(durations, 0.95) if p95_s is None else p95_s,
        durations_s=tuple(durations),
    )


def _money(charges: Charges, *, priced: int) -> dict[str, Any]:
    """The time and money columns of a row from its exact charges (floats only here)."""
    seconds = {category: float(ns / 1_000_000_000) for category, ns in charges.gpu_ns.items()}
    billed = float(charges.billed_gpu_ns / 1_000_000_000)
    rates = {rate for rate in charges.rates if rate} if priced else set()
    # A negative rate marks charges taken as recorded (no rate known): no single rate then.
    versions = charges.versions
    by_resource = charges.usd_by_resource
    return {
        "request_gpu_s": seconds["request"],
        "startup_gpu_s": seconds["startup"],
        "idle_gpu_s": seconds["idle"],
        "rounding_gpu_s": seconds["rounding"],
        "billed_gpu_s": billed,
        "fee_usd": float(charges.usd["fee"]) if priced else None,
        "gpu_usd": float(by_resource["gpu"]) if priced else None,
        "cpu_usd": float(by_resource["cpu"]) if priced else None,
        "memory_usd": float(by_resource["memory"]) if priced else None,
        "rate_usd_per_gpu_s": (
            float(rate) if len(rates) == 1 and (rate := next(iter(rates))) > 0 else None
        ),
        "cost_usd": float(charges.total_usd) if priced else None,
        "pricing_version": (
            None if not versions else next(iter(versions)) if len(versions) == 1 else "mixed"
        ),
        "billed_gpu_seconds": billed,
    }


def idle_row(charges: Charges, workers: int, provisional: int) -> ReportRow:
    """The ``(idle)`` row: what the workers were charged that no request was (``separate``)."""
    return build_row(
        IDLE_KEY,
        Measures(),
        charges,
        priced=workers,
        unpriced=0,
        provisional=provisional,
        p50_s=math.nan,
        p95_s=math.nan,
    )


def _share(busy: float | None, billed: float) -> float | None:
    if busy is None:
        return None
    return busy / billed if billed > 0 else 0.0


class _Tally:
    """Running sums for one group."""

    __slots__ = ("charges", "durations", "measures", "priced", "provisional", "unpriced")

    def __init__(self) -> None:
        self.measures = Measures()
        self.unpriced = 0
        self.priced = 0
        self.provisional = 0
        self.charges = Charges()
        self.durations: list[float] = []

    def add(
        self,
        record: InvocationRecord,
        charges: Charges,
        priced: bool,
        target: str | None = None,
        *,
        provisional: bool = False,
    ) -> None:
        self.provisional += provisional
        self.charges.merge(charges)
        if priced:
            self.priced += 1
        else:
            self.unpriced += 1
        entry = (record.external_targets or {}).get(target) if target is not None else None
        self.measures.add(record, entry)
        if not math.isnan(record.duration_s):  # unknown (stored as NULL): no percentile has it
            self.durations.append(record.duration_s)

    def row(self, key: str) -> ReportRow:
        durations = sorted(self.durations)
        return build_row(
            key,
            self.measures,
            self.charges,
            priced=self.priced,
            unpriced=self.unpriced,
            provisional=self.provisional,
            p50_s=_percentile(durations, 0.50),
            p95_s=_percentile(durations, 0.95),
            durations_s=tuple(durations),
        )


def _key_function(by: str) -> Callable[[InvocationRecord], str]:
    if by == "user":
        return lambda record: record.user_id or NO_KEY
    if by == "tenant":
        return lambda record: record.tenant or NO_KEY
    if by == "endpoint":
        return lambda record: record.endpoint or NO_KEY
    if by == "platform":
        return lambda record: record.platform or NO_KEY
    if by == "version":
        return lambda record: record.service_version or NO_KEY
    if by == "model":
        return lambda record: record.model or NO_KEY
    if by == "day":
        return _utc_day
    if by == "invocation":
        return lambda record: record.invocation_id
    raise ValueError(f"cannot group by {by!r}: choose one of {', '.join(GROUP_BY)}")


def _utc_day(record: InvocationRecord) -> str:
    """The UTC date of the record's start, ``YYYY-MM-DD``."""
    start = _EPOCH + dt.timedelta(microseconds=record.start_ns // 1000)
    return start.date().isoformat()


def _cost_order(row: ReportRow) -> tuple[bool, float, str]:
    """Sort key: priced before unpriced, then cost descending, then key."""
    if row.cost_usd is None:
        return (True, 0.0, row.key)
    return (False, -row.cost_usd, row.key)


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (NumPy's default) over sorted values."""
    if not ordered:
        return math.nan
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    weight = position - lower
    return ordered[lower] + (ordered[upper] - ordered[lower]) * weight
