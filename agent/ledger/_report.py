"""Reports over ledger records: chargeback and usage per user, tenant, endpoint, platform or day.

Pure functions over :class:`InvocationRecord`; reading the ledger and printing are the CLI's job.
Unknown stays unknown: a group in which no record has a busy-GPU measurement, a price or a token
count reports ``None`` for it, never zero, and ``unpriced`` says how many records a cost total
leaves out.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from typing import Final

from gpuledger._record import InvocationRecord

__all__ = [
    "GROUP_BY",
    "NO_KEY",
    "REPORT_COLUMNS",
    "ReportRow",
    "aggregate",
    "parse_since",
    "totals",
]

GROUP_BY: Final = ("user", "tenant", "endpoint", "platform", "day", "invocation", "target")
"""What a report can group by."""
NO_KEY: Final = "(none)"
"""The group of records that carry no user, tenant or endpoint."""
TOTAL_KEY: Final = "TOTAL"

_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$", re.IGNORECASE)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


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
    """Requests that did not end ``ok`` (error, timeout, killed, cancelled)."""
    billed_gpu_seconds: float
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
    cost_usd: float | None
    """Sum over the priced records; None when none was priced."""
    unpriced: int
    """Records with no price, left out of ``cost_usd``."""
    input_tokens: int | None
    output_tokens: int | None
    duration_p50_s: float
    duration_p95_s: float
    # Raw samples, kept so that totals() can compute exact percentiles and means across groups.
    _durations_s: tuple[float, ...] = dataclasses.field(default=(), repr=False, compare=False)
    _init_durations_s: tuple[float, ...] = dataclasses.field(default=(), repr=False, compare=False)
    _busy_billed_s: float = dataclasses.field(default=0.0, repr=False, compare=False)


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


def aggregate(records: Iterable[InvocationRecord], by: str) -> list[ReportRow]:
    """Group ``records`` by ``by`` (one of :data:`GROUP_BY`) and summarise each group.

    Rows are sorted by cost, highest first (unpriced groups last), then by key; grouped by
    ``day`` they are in date order instead, as a time series reads.
    """
    tallies: dict[str, _Tally] = {}
    if by == "target":
        # An invocation counts once under each target it called (a row is "the invocations
        # that called it"), with that target's calls and wait; rows do not add up across.
        for record in records:
            for target in record.external_targets or (NO_KEY,):
                tally = tallies.get(target)
                if tally is None:
                    tally = tallies[target] = _Tally()
                tally.add(record, target)
    else:
        key_of = _key_function(by)
        for record in records:
            key = key_of(record)
            tally = tallies.get(key)
            if tally is None:
                tally = tallies[key] = _Tally()
            tally.add(record)
    rows = [tally.row(key) for key, tally in tallies.items()]
    if by == "day":
        return sorted(rows, key=lambda row: row.key)
    return sorted(rows, key=_cost_order)


def totals(rows: Sequence[ReportRow]) -> ReportRow:
    """One row, keyed ``TOTAL``, summarising ``rows`` as if their records were one group."""
    durations = sorted(duration for row in rows for duration in row._durations_s)
    init_durations = [value for row in rows for value in row._init_durations_s]
    invocations = sum(row.invocations for row in rows)
    cold_starts = sum(row.cold_starts for row in rows)
    return ReportRow(
        key=TOTAL_KEY,
        invocations=invocations,
        cold_starts=cold_starts,
        cold_start_share=cold_starts / invocations if invocations else 0.0,
        mean_init_s=math.fsum(init_durations) / len(init_durations) if init_durations else None,
        errors=sum(row.errors for row in rows),
        billed_gpu_seconds=math.fsum(row.billed_gpu_seconds for row in rows),
        busy_gpu_seconds=(busy := _sum_known(row.busy_gpu_seconds for row in rows)),
        busy_share=_share(busy, math.fsum(row._busy_billed_s for row in rows)),
        energy_j=_sum_known(row.energy_j for row in rows),
        external_calls=_sum_known_int(row.external_calls for row in rows),
        external_wait_s=_sum_known(row.external_wait_s for row in rows),
        external_wait_cost_usd=_sum_known(row.external_wait_cost_usd for row in rows),
        cost_usd=_sum_known(row.cost_usd for row in rows),
        unpriced=sum(row.unpriced for row in rows),
        input_tokens=_sum_known_int(row.input_tokens for row in rows),
        output_tokens=_sum_known_int(row.output_tokens for row in rows),
        duration_p50_s=_percentile(durations, 0.50),
        duration_p95_s=_percentile(durations, 0.95),
        _durations_s=tuple(durations),
        _init_durations_s=tuple(init_durations),
        _busy_billed_s=math.fsum(row._busy_billed_s for row in rows),
    )


def _share(busy: float | None, billed: float) -> float | None:
    if busy is None:
        return None
    return busy / billed if billed > 0 else 0.0


class _Tally:
    """Running sums for one group."""

    __slots__ = (
        "billed",
        "busy",
        "busy_billed",
        "cold_starts",
        "cost",
        "durations",
        "energy",
        "errors",
        "ext_calls",
        "ext_cost",
        "ext_wait",
        "init_durations",
        "input_tokens",
        "invocations",
        "output_tokens",
        "unpriced",
    )

    def __init__(self) -> None:
        self.invocations = 0
        self.cold_starts = 0
        self.errors = 0
        self.unpriced = 0
        self.durations: list[float] = []
        self.init_durations: list[float] = []
        self.billed = _ExactSum()
        self.busy = _ExactSum()
        self.busy_billed = _ExactSum()
        self.energy = _ExactSum()
        self.ext_calls: list[int] = []
        self.ext_wait = _ExactSum()
        self.ext_cost = _ExactSum()
        self.cost = _ExactSum()
        self.input_tokens: list[int] = []
        self.output_tokens: list[int] = []

    def add(self, record: InvocationRecord, target: str | None = None) -> None:
        self.invocations += 1
        entry = (record.external_targets or {}).get(target) if target is not None else None
        if entry is not None:  # grouped by target: that target's share of the calls
            self.ext_calls.append(int(entry.get("calls", 0)))
            self.ext_wait.add(float(entry.get("wait_s", 0.0)))
            if "wait_usd" in entry:
                self.ext_cost.add(float(entry["wait_usd"]))
        elif record.external_calls is not None:
            self.ext_calls.append(record.external_calls)
            if record.external_wait_seconds is not None:
                self.ext_wait.add(record.external_wait_seconds)
            if record.external_wait_cost_usd is not None:
                self.ext_cost.add(record.external_wait_cost_usd)
        self.durations.append(record.duration_s)
        self.billed.add(record.billed_gpu_seconds)
        if record.cold:
            self.cold_starts += 1
            if record.init_duration_s is not None:
                self.init_durations.append(record.init_duration_s)
        if record.outcome != "ok":
            self.errors += 1
        if record.busy_gpu_seconds is not None:
            self.busy.add(record.busy_gpu_seconds)
            self.busy_billed.add(record.billed_gpu_seconds)
        if record.energy_j is not None:
            self.energy.add(record.energy_j)
        if record.cost_usd is None:
            self.unpriced += 1
        else:
            self.cost.add(record.cost_usd)
        if record.input_tokens is not None:
            self.input_tokens.append(record.input_tokens)
        if record.output_tokens is not None:
            self.output_tokens.append(record.output_tokens)

    def row(self, key: str) -> ReportRow:
        durations = sorted(self.durations)
        return ReportRow(
            key=key,
            invocations=self.invocations,
            cold_starts=self.cold_starts,
            cold_start_share=self.cold_starts / self.invocations,
            mean_init_s=(
                math.fsum(self.init_durations) / len(self.init_durations)
                if self.init_durations
                else None
            ),
            errors=self.errors,
            billed_gpu_seconds=self.billed.value(),
            busy_gpu_seconds=(busy := self.busy.value() if self.busy.count else None),
            busy_share=_share(busy, self.busy_billed.value()),
            energy_j=self.energy.value() if self.energy.count else None,
            external_calls=sum(self.ext_calls) if self.ext_calls else None,
            external_wait_s=self.ext_wait.value() if self.ext_wait.count else None,
            external_wait_cost_usd=self.ext_cost.value() if self.ext_cost.count else None,
            cost_usd=self.cost.value() if self.cost.count else None,
            unpriced=self.unpriced,
            input_tokens=sum(self.input_tokens) if self.input_tokens else None,
            output_tokens=sum(self.output_tokens) if self.output_tokens else None,
            duration_p50_s=_percentile(durations, 0.50),
            duration_p95_s=_percentile(durations, 0.95),
            _durations_s=tuple(durations),
            _init_durations_s=tuple(self.init_durations),
            _busy_billed_s=self.busy_billed.value(),
        )


class _ExactSum:
    """A float sum rounded once at the end, as ``math.fsum`` does, without keeping the values.

    A chargeback total must not drift with the number of records or the order they are read in.
    Shewchuk's algorithm: ``partials`` are non-overlapping floats whose exact sum is the total.
    """

    __slots__ = ("count", "partials")

    def __init__(self) -> None:
        self.count = 0
        self.partials: list[float] = []

    def add(self, value: float) -> None:
        self.count += 1
        kept = 0
        for stored in self.partials:
            larger, smaller = (value, stored) if abs(value) >= abs(stored) else (stored, value)
            high = larger + smaller
            low = smaller - (high - larger)
            if low:
                self.partials[kept] = low
                kept += 1
            value = high
        self.partials[kept:] = [value]

    def value(self) -> float:
        return math.fsum(self.partials)


def _key_function(by: str) -> Callable[[InvocationRecord], str]:
    if by == "user":
        return lambda record: record.user_id or NO_KEY
    if by == "tenant":
        return lambda record: record.tenant or NO_KEY
    if by == "endpoint":
        return lambda record: record.endpoint or NO_KEY
    if by == "platform":
        return lambda record: record.platform or NO_KEY
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


def _sum_known(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return math.fsum(known) if known else None


def _sum_known_int(values: Iterable[int | None]) -> int | None:
    known = [value for value in values if value is not None]
    return sum(known) if known else None
