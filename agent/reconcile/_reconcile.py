"""The ledger's charges beside a platform's own bill: per endpoint and period, what was invoiced,
what gpuledger attributed, the difference, and what explains it.

gpuledger's side is :func:`gpuledger.ledger.period_charges`: the same workers, billed by the same
engine and rules as ``gpuledger report``, cut at the invoice's period boundaries. Nothing here
bills anything itself; a cause that needs "what if the platform billed idle time" asks the engine
again with the rules changed that one way.

A row's difference (invoiced - attributed) is explained, in this order, by:

- **lines no ledger row explains**: a period and endpoint the ledger has no rows for
  (``no_ledger_rows``); pods the invoice names that the ledger never saw (``unseen_workers``,
  RunPod v1 grouped by ``podId``); Modal objects that are not Apps (``not_metered``: volumes,
  ...); and the converse, ledger charges the invoice does not bill (``not_invoiced``);
- **the parts other than GPU time**, where the export itemises them: the CPU and memory
  amounts less gpuledger's CPU and memory charges (``cpu``, ``memory``: Modal bills a worker's
  reservation over its billed time, and so do gpuledger's rules, at the reservation the ``cpu``
  and ``memory_gib`` settings say; RunPod's ``cpuAmount`` is its CPU workers, which gpuledger
  charges nothing for); disk and other parts, which gpuledger does not model; the platform fee
  (RunPod's ``feeAmount``) less the fees gpuledger's rules charge (``fee``; where the export has
  no fee part, gpuledger's fees are taken as not billed);
- **how the GPU time was billed**, the invoice's GPU amount against the ledger's GPU dollars
  alone (``Charges.usd_by_resource["gpu"]``; where the export has no parts, its whole amount
  against the ledger's time charges, every resource, so the causes below are then of all of
  them):
  ``idle`` (idle time the platform billed and the rules do not, or the reverse) and ``startup``
  (the same for the workers' start-up), each the engine's bill with that rule flipped less the
  rules' own; ``price`` (a different price per GPU-second); and, where the export gives billed
  time (RunPod v1 ``timeBilledMs``), ``billed_time`` (time billed that the ledger's workers do
  not account for). With billed time, each row takes the flips that bring the ledger's GPU time
  closest to it, and the price is the invoice's amount over that time. Without it, each endpoint
  takes the first of: no flip, idle, start-up, both, that matches every one of its rows at the
  rules' price; else the first that matches them all at one other price (``price``; with a
  single row, which cannot tell a price from time billed otherwise, that row's price, said
  so); else the one that comes closest (the rest stays unexplained).

What none of these explains is the row's ``unexplained_usd``. A match is to within a tenth of a
cent or 0.1 % of the amount, whichever is more: exports round their amounts.

Why one module of this size: the rows, their causes and the endpoint's fit all read the same
tallies of the same flipped bills (``_Tally``, ``_Draft``), and the causes must add up to the
difference together; apart, each would need the others' internals.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Final

from gpuledger._record import InvocationRecord
from gpuledger.billing import frozen_rules, worker_key
from gpuledger.ledger import PeriodCharge, period_charges
from gpuledger.reconcile._usage import Invoice, InvoiceLine, bucket_end

if TYPE_CHECKING:
    from gpuledger.billing import Rules

__all__ = [
    "ACCOUNT_KEY",
    "ADJUSTMENTS",
    "CAUSES",
    "NO_ENDPOINT",
    "RESIDUAL_CAUSES",
    "UNKNOWN_PODS",
    "Cause",
    "ReconcileRow",
    "Reconciliation",
    "reconcile",
]

RulesFor = Callable[[InvocationRecord], "tuple[Rules | None, str | None]"]

CAUSES: Final = {
    "no_ledger_rows": "no ledger rows for this endpoint and period",
    "unseen_workers": "workers with no ledger rows",
    "not_metered": "not an App (gpuledger meters Apps)",
    "not_invoiced": "ledger charges the invoice does not bill",
    "idle": "idle time",
    "startup": "start-up",
    "price": "price per GPU-second",
    "billed_time": "billed time the ledger does not account for",
    "fee": "platform fee",
    "cpu": "CPU (invoiced less gpuledger's CPU charges)",
    "memory": "memory (invoiced less gpuledger's memory charges)",
    "disk": "disk (gpuledger does not model it)",
    "other": "other amounts (gpuledger does not model them)",
}
"""Cause kind -> what it says, in the order they are listed."""
RESIDUAL_CAUSES: Final = ("no_ledger_rows", "unseen_workers", "not_metered")
"""Invoiced amounts that no ledger row explains: the true-up's residual."""
ADJUSTMENTS: Final[tuple[tuple[str, ...], ...]] = ((), ("idle",), ("startup",), ("idle", "startup"))
"""The rule flips tried, in order of preference (fewest first)."""
NO_ENDPOINT: Final = "(none)"
"""Ledger rows with no endpoint."""
UNKNOWN_PODS: Final = "(pods not in the ledger)"
"""Invoice lines of pods (RunPod v1 by ``podId``) that the ledger never saw."""
ACCOUNT_KEY: Final = "(all endpoints)"
"""An export grouped by neither endpoint nor pod (RunPod v1 by ``gpuTypeId``): one row a period."""

_NS: Final = 1_000_000_000
_MIN_PERIOD_NS: Final = 60 * _NS
_TIME: Final = ("request", "startup", "idle", "rounding")
_RESOURCES: Final = ("cpu", "memory")
"""Parts gpuledger charges too, where the platform does (Modal), at the worker's reservation."""
_UNMODELLED: Final = ("disk", "other")
_SETTING: Final = {"cpu": "cpu", "memory": "memory_gib"}
"""The setting that says a resource's reservation."""
_FLIP_WORDS: Final = {"idle": "idle time", "startup": "start-up"}


@dataclasses.dataclass(frozen=True, slots=True)
class Cause:
    """One explained part of a row's difference: ``usd`` of it (signed like the difference:
    positive where the invoice is higher), of ``kind`` (a key of :data:`CAUSES`)."""

    kind: str
    usd: Fraction
    detail: str

    @property
    def title(self) -> str:
        return CAUSES[self.kind]


@dataclasses.dataclass(frozen=True, slots=True)
class ReconcileRow:
    """One endpoint in one period of the invoice."""

    endpoint: str
    """The invoice's id for it (RunPod ``serverlessId``, Modal ``object_id``), the ledger's
    endpoint where the invoice does not name it, or one of :data:`UNKNOWN_PODS`,
    :data:`ACCOUNT_KEY`."""
    label: str
    """For people: a Modal App's name with its id."""
    period_start_ns: int
    period_end_ns: int
    invoiced_usd: Fraction
    attributed_usd: Fraction
    """gpuledger's charges (the rules as they are, the ``report``'s numbers)."""
    causes: tuple[Cause, ...]
    adjustments: tuple[str, ...]
    """The rule flips that match the invoice (``idle``, ``startup``)."""
    provisional: bool
    """Some of its workers may still be running: their charges can still grow."""
    lines: tuple[InvoiceLine, ...] = dataclasses.field(repr=False)
    charges: tuple[PeriodCharge, ...] = dataclasses.field(repr=False, compare=False)
    """The ledger's charges in the row, billed with :attr:`adjustments` (what matches the
    invoice best: the true-up's measured shares)."""

    @property
    def difference_usd(self) -> Fraction:
        return self.invoiced_usd - self.attributed_usd

    @property
    def explained_usd(self) -> Fraction:
        return sum((cause.usd for cause in self.causes), Fraction(0))

    @property
    def unexplained_usd(self) -> Fraction:
        return self.difference_usd - self.explained_usd

    @property
    def residual_usd(self) -> Fraction:
        """Invoiced amounts no ledger row explains (:data:`RESIDUAL_CAUSES`)."""
        return sum(
            (cause.usd for cause in self.causes if cause.kind in RESIDUAL_CAUSES), Fraction(0)
        )

    @property
    def difference_pct(self) -> float | None:
        """The difference as a percentage of the invoiced amount; None when nothing was
        invoiced (any difference is then over every tolerance)."""
        if self.invoiced_usd == 0:
            return 0.0 if self.attributed_usd == 0 else None
        return float(self.difference_usd * 100 / self.invoiced_usd)

    @property
    def metered(self) -> bool:
        """False for an object gpuledger does not meter (a Modal Volume): nothing to hold the
        ledger to."""
        return not self.causes or any(cause.kind != "not_metered" for cause in self.causes)

    def within(self, tolerance_pct: float) -> bool:
        """Whether the difference is at most ``tolerance_pct`` % of the invoiced amount (always,
        for an object gpuledger does not meter)."""
        if self.difference_usd == 0 or not self.metered:
            return True
        if self.invoiced_usd == 0:
            return False
        limit = Fraction(tolerance_pct) * abs(self.invoiced_usd) / 100
        return abs(self.difference_usd) <= limit


@dataclasses.dataclass(frozen=True, slots=True)
class Reconciliation:
    """An invoice beside the ledger: one row per endpoint and period (sorted by endpoint, then
    period)."""

    invoice: Invoice
    rows: tuple[ReconcileRow, ...]
    period_ns: int
    """The periods the ledger's charges were cut in (divides every invoice bucket)."""
    records: int
    """Ledger records of the invoice's platform that were billed."""

    @property
    def invoiced_usd(self) -> Fraction:
        return sum((row.invoiced_usd for row in self.rows), Fraction(0))

    @property
    def attributed_usd(self) -> Fraction:
        return sum((row.attributed_usd for row in self.rows), Fraction(0))

    @property
    def difference_usd(self) -> Fraction:
        return self.invoiced_usd - self.attributed_usd

    def causes(self) -> dict[str, Fraction]:
        """Each cause kind's amount over every row, and ``unexplained``."""
        totals: dict[str, Fraction] = {}
        for row in self.rows:
            for cause in row.causes:
                totals[cause.kind] = totals.get(cause.kind, Fraction(0)) + cause.usd
        totals["unexplained"] = sum((row.unexplained_usd for row in self.rows), Fraction(0))
        return totals

    def failing(self, tolerance_pct: float) -> list[ReconcileRow]:
        """The rows whose difference is over ``tolerance_pct`` % of their invoiced amount."""
        return [row for row in self.rows if not row.within(tolerance_pct)]


def reconcile(
    invoice: Invoice,
    records: Iterable[InvocationRecord],
    *,
    policy: str = "separate",
    rules_for: RulesFor = frozen_rules,
    fallback: RulesFor | None = None,
    stops: Mapping[str, int] | None = None,
    now_ns: int | None = None,
) -> Reconciliation:
    """``invoice`` beside the charges of ``records`` (those of the invoice's platform), billed as
    ``gpuledger report`` bills them (same keywords; ``policy`` decides only who owns a charge,
    not the totals). Records should include those of the workers alive at the invoice's edges
    (read a day either side); charges outside the invoice's window are left out."""
    listed = [
        record
        for record in records
        if (record.pricing_platform or record.platform) == invoice.platform
    ]
    periods = _periods(invoice)
    period_ns = _period_ns(periods)
    billed = {
        adjustment: period_charges(
            listed,
            period_ns=period_ns,
            policy=policy,
            rules_for=_flipped(rules_for, fallback, adjustment) if adjustment else rules_for,
            fallback=None if adjustment else fallback,
            stops=stops,
            now_ns=now_ns,
        )
        for adjustment in ADJUSTMENTS
    }
    keys = _Keys(invoice, listed)
    starts = [start for start, _ in periods]
    lines: dict[tuple[str, int], list[InvoiceLine]] = {}
    for line in invoice.lines:
        lines.setdefault((keys.of_line(line), line.period_start_ns), []).append(line)
    tallies: dict[tuple[str, ...], dict[tuple[str, int], _Tally]] = {}
    for adjustment, charges in billed.items():
        cells = tallies[adjustment] = {}
        for charge in charges:
            index = bisect.bisect_right(starts, charge.period_start_ns) - 1
            if index < 0 or charge.period_start_ns >= periods[index][1]:
                continue  # outside the invoice's window
            row_key = (keys.of_charge(charge), periods[index][0])
            tally = cells.get(row_key)
            if tally is None:
                tally = cells[row_key] = _Tally()
            tally.add(charge, keys.gpus.get(charge.worker, 1))
    row_keys = set(lines)
    for cells in tallies.values():
        row_keys |= set(cells)
    by_endpoint: dict[str, list[tuple[str, int]]] = {}
    for row_key in sorted(row_keys):
        by_endpoint.setdefault(row_key[0], []).append(row_key)
    ends = dict(periods)
    rows: list[ReconcileRow] = []
    for endpoint, endpoint_keys in by_endpoint.items():
        drafts = [
            _Draft(
                endpoint=endpoint,
                period_start_ns=start,
                period_end_ns=ends.get(start) or bucket_end(start, invoice.bucket),
                lines=tuple(lines.get((endpoint, start), ())),
                tallies={
                    adjustment: cells.get((endpoint, start), _EMPTY)
                    for adjustment, cells in tallies.items()
                },
                known_pods=keys.workers,
                platform=invoice.platform,
            )
            for _, start in endpoint_keys
        ]
        # A flip can reach a period neither side has anything in (idle running past the hour).
        drafts = [draft for draft in drafts if draft.lines or not draft.base.empty]
        fit = _fit([draft for draft in drafts if draft.fits_by_amount])
        rows.extend(draft.row(keys.label(endpoint), fit) for draft in drafts)
    return Reconciliation(
        invoice=invoice, rows=tuple(rows), period_ns=period_ns, records=len(listed)
    )


def _flipped(
    rules_for: RulesFor, fallback: RulesFor | None, adjustment: tuple[str, ...]
) -> RulesFor:
    """``rules_for`` (then ``fallback``) with idle and/or start-up billing flipped."""

    def flipped(record: InvocationRecord) -> tuple[Rules | None, str | None]:
        rules, version = rules_for(record)
        if rules is None and fallback is not None:
            rules, version = fallback(record)
        if rules is None or rules.reserved:  # a reserved GPU bills everything already
            return rules, version
        idle = rules.bills_idle != ("idle" in adjustment)
        startup = rules.bills_startup != ("startup" in adjustment)
        return dataclasses.replace(rules, bills_idle=idle, bills_startup=startup), version

    return flipped


def _periods(invoice: Invoice) -> list[tuple[int, int]]:
    """The invoice's periods: its lines', and its bucket's over the window it covers."""
    found = {line.period_start_ns: line.period_end_ns for line in invoice.lines}
    start = invoice.start_ns
    while start < invoice.end_ns and len(found) < 1_000_000:
        end = bucket_end(start, invoice.bucket)
        found.setdefault(start, end)
        start = end
    ordered = sorted(found.items())
    for (_, end), (start, _) in itertools.pairwise(ordered):
        if start < end:
            raise ValueError(f"the invoice's periods overlap at {start} ns")
    return ordered


def _period_ns(periods: Sequence[tuple[int, int]]) -> int:
    """The longest period that divides every edge: the ledger's charges are cut in it."""
    step = 0
    for start, end in periods:
        step = math.gcd(step, start, end)
    if step < _MIN_PERIOD_NS:
        raise ValueError("the invoice's periods do not start and end on whole minutes")
    return step


class _Keys:
    """Which row an invoice line and a ledger charge belong to (see :func:`reconcile`)."""

    def __init__(self, invoice: Invoice, records: Sequence[InvocationRecord]) -> None:
        self.aliases: dict[str, str] = {}
        self.labels: dict[str, str] = {}
        for line in invoice.lines:
            if line.endpoint is None:
                continue
            for name in line.names:
                self.aliases.setdefault(name, line.endpoint)
            if line.name and line.name != line.endpoint:
                self.labels.setdefault(line.endpoint, f"{line.name} ({line.endpoint})")
        self.account = all(line.endpoint is None and line.worker is None for line in invoice.lines)
        self.endpoint_of: dict[str, str | None] = {}
        self.gpus: dict[str, int] = {}
        for record in records:
            key = worker_key(record)
            self.endpoint_of.setdefault(key, record.endpoint)
            self.gpus[key] = max(self.gpus.get(key, 1), record.gpu_count)
        self.workers = frozenset(self.endpoint_of)

    def of_ledger_endpoint(self, endpoint: str | None) -> str:
        if self.account:
            return ACCOUNT_KEY
        if endpoint is None:
            return NO_ENDPOINT
        return self.aliases.get(endpoint, endpoint)

    def of_charge(self, charge: PeriodCharge) -> str:
        return self.of_ledger_endpoint(charge.endpoint)

    def of_line(self, line: InvoiceLine) -> str:
        if line.endpoint is not None:
            return line.endpoint
        if line.worker is not None:
            if line.worker not in self.endpoint_of:
                return UNKNOWN_PODS
            return self.of_ledger_endpoint(self.endpoint_of[line.worker])
        return ACCOUNT_KEY

    def label(self, key: str) -> str:
        return self.labels.get(key, key)


class _Tally:
    """The ledger's charges in one row under one billing."""

    __slots__ = (
        "charges",
        "fee_usd",
        "gpu_ns",
        "gpus",
        "provisional",
        "rates",
        "resource_usd",
        "time_usd",
    )

    def __init__(self) -> None:
        self.time_usd = Fraction(0)
        """Billed time, every resource (GPU, CPU, memory)."""
        self.resource_usd: dict[str, Fraction] = dict.fromkeys(("gpu", *_RESOURCES), Fraction(0))
        """Billed time per resource: they add up to :attr:`time_usd`."""
        self.fee_usd = Fraction(0)
        self.gpu_ns: dict[str, Fraction] = dict.fromkeys(_TIME, Fraction(0))
        self.rates: set[Fraction] = set()
        self.gpus = 1
        self.provisional = False
        self.charges: list[PeriodCharge] = []

    def add(self, charge: PeriodCharge, gpus: int) -> None:
        usd = charge.charges.usd
        self.fee_usd += usd["fee"]
        self.time_usd += sum((usd[category] for category in _TIME), Fraction(0))
        for resource, amount in charge.charges.usd_by_resource.items():
            self.resource_usd[resource] += amount
        for category, ns in charge.charges.gpu_ns.items():
            self.gpu_ns[category] += ns
        self.rates |= {rate for rate in charge.charges.rates if rate > 0}
        self.gpus = max(self.gpus, gpus)
        self.provisional |= charge.provisional
        self.charges.append(charge)

    @property
    def total_gpu_ns(self) -> Fraction:
        return sum(self.gpu_ns.values(), Fraction(0))

    @property
    def gpu_usd(self) -> Fraction:
        return self.resource_usd["gpu"]

    @property
    def usd(self) -> Fraction:
        return self.time_usd + self.fee_usd

    @property
    def empty(self) -> bool:
        return not self.charges


_EMPTY: Final = _Tally()


def _tolerance(amount: Fraction) -> Fraction:
    """How far apart two amounts may be and still match: exports round their amounts."""
    return max(Fraction(1, 1000), abs(amount) / 1000)


@dataclasses.dataclass(frozen=True, slots=True)
class _Fit:
    adjustment: tuple[str, ...] = ()
    price_factor: Fraction = Fraction(1)
    single: bool = False
    """Worked out from one period: a price, or GPU time billed otherwise."""


@dataclasses.dataclass(slots=True)
class _Draft:
    """A row being worked out."""

    endpoint: str
    period_start_ns: int
    period_end_ns: int
    lines: tuple[InvoiceLine, ...]
    tallies: Mapping[tuple[str, ...], _Tally]
    known_pods: frozenset[str]
    platform: str

    @property
    def base(self) -> _Tally:
        return self.tallies[()]

    @property
    def ledger_lines(self) -> list[InvoiceLine]:
        """Its invoice lines that the ledger could explain (not pods it never saw)."""
        return [
            line for line in self.lines if line.worker is None or line.worker in self.known_pods
        ]

    @property
    def has_ledger(self) -> bool:
        return any(not tally.empty for tally in self.tallies.values())

    @property
    def itemised(self) -> bool:
        known = self.ledger_lines
        return bool(known) and all(line.parts is not None for line in known)

    @property
    def billed_ns(self) -> int | None:
        """The GPU time the invoice billed (its billed ms x the workers' GPUs), where every line
        says."""
        known = self.ledger_lines
        if not known or any(line.billed_ms is None for line in known):
            return None
        return sum(line.billed_ms or 0 for line in known) * 1_000_000 * self.base.gpus

    def part(self, name: str) -> Fraction:
        return sum(
            ((line.parts or {}).get(name, Fraction(0)) for line in self.ledger_lines),
            Fraction(0),
        )

    @property
    def compute_usd(self) -> Fraction:
        """The invoice's amount to hold against :meth:`charged`: its GPU part where the export
        itemises it, else its whole amount."""
        if self.itemised:
            return self.part("gpu")
        return sum((line.amount_usd for line in self.ledger_lines), Fraction(0))

    def charged(self, adjustment: tuple[str, ...]) -> Fraction:
        """The ledger's charges to hold against :attr:`compute_usd`, billed with
        ``adjustment``: its GPU dollars alone where the export itemises its parts (the CPU and
        memory are compared part by part), else its billed time's, every resource."""
        tally = self.tallies[adjustment]
        return tally.gpu_usd if self.itemised else tally.time_usd

    @property
    def fits_by_amount(self) -> bool:
        """A row the endpoint's fit (no billed time) is worked out over."""
        return bool(self.ledger_lines) and self.has_ledger and self.billed_ns is None

    def row(self, label: str, fit: _Fit) -> ReconcileRow:
        invoiced = sum((line.amount_usd for line in self.lines), Fraction(0))
        causes: list[Cause] = []
        unseen = [line for line in self.lines if line not in self.ledger_lines]
        if unseen:
            pods = sorted({line.worker or "" for line in unseen})
            causes.append(
                Cause(
                    "unseen_workers",
                    sum((line.amount_usd for line in unseen), Fraction(0)),
                    f"pod(s) {', '.join(pods)} billed, never seen in the ledger",
                )
            )
        adjustment: tuple[str, ...] = ()
        known = self.ledger_lines
        if known and not self.has_ledger:
            amount = sum((line.amount_usd for line in known), Fraction(0))
            if self.platform == "modal" and not self.endpoint.startswith("ap-"):
                kind = "not_metered"
                detail = f"Modal object {self.endpoint}: storage or another object, not an App"
            else:
                kind = "no_ledger_rows"
                detail = "no ledger rows here: workers not instrumented, or their rows lost"
            causes.append(Cause(kind, amount, detail))
        elif known:
            adjustment = self._explain(causes, fit)
        elif not self.base.empty:
            causes.append(
                Cause(
                    "not_invoiced",
                    -self.base.usd,
                    "the invoice bills nothing here: another account, or not in its data yet",
                )
            )
        return ReconcileRow(
            endpoint=self.endpoint,
            label=label,
            period_start_ns=self.period_start_ns,
            period_end_ns=self.period_end_ns,
            invoiced_usd=invoiced,
            attributed_usd=self.base.usd,
            causes=tuple(cause for cause in causes if cause.usd),
            adjustments=adjustment,
            provisional=self.base.provisional,
            lines=self.lines,
            charges=tuple(self.tallies[adjustment].charges),
        )

    def _explain(self, causes: list[Cause], fit: _Fit) -> tuple[str, ...]:
        """The causes of a row the ledger and the invoice both have; the flips taken."""
        base = self.base
        billed_ns = self.billed_ns
        compute = self.compute_usd
        if billed_ns is not None:
            adjustment = min(
                ADJUSTMENTS,
                key=lambda each: (
                    abs(billed_ns - self.tallies[each].total_gpu_ns),
                    ADJUSTMENTS.index(each),
                ),
            )
        else:
            adjustment = fit.adjustment
        chosen = self.tallies[adjustment]
        if self.itemised:
            for resource in _RESOURCES:
                self._resource(causes, resource, adjustment)
            for part in _UNMODELLED:
                amount = self.part(part)
                if amount:
                    causes.append(Cause(part, amount, f"the invoice's {part} amount"))
            fee = self.part("fee")
            if fee or base.fee_usd:
                causes.append(
                    Cause(
                        "fee",
                        fee - base.fee_usd,
                        f"invoiced {_usd(fee)}; gpuledger's rules charge "
                        + (_usd(base.fee_usd) if base.fee_usd else "none"),
                    )
                )
        elif base.fee_usd:
            causes.append(
                Cause(
                    "fee",
                    -base.fee_usd,
                    f"gpuledger's rules charge {_usd(base.fee_usd)} of per-request fees; the "
                    "invoice has no fee part (taken as not billed)",
                )
            )
        self._flips(causes, adjustment)
        charged = self.charged(adjustment)
        rate = charged / chosen.total_gpu_ns * _NS if chosen.total_gpu_ns else None
        # Without parts, the rates are of the worker's every resource, not the GPU's alone.
        every = " (CPU and memory included)" if charged != chosen.gpu_usd else ""
        if billed_ns is not None and rate is not None:
            missing_ns = billed_ns - chosen.total_gpu_ns
            if abs(missing_ns * rate / _NS) > _tolerance(compute):
                causes.append(
                    Cause(
                        "billed_time",
                        missing_ns * rate / _NS,
                        f"the invoice bills {_seconds(billed_ns)} GPU s, the ledger's workers "
                        f"{_seconds(chosen.total_gpu_ns)}",
                    )
                )
            at_rules = rate * billed_ns / _NS
            if abs(compute - at_rules) > _tolerance(compute):
                causes.append(
                    Cause(
                        "price",
                        compute - at_rules,
                        f"billed at {_rate(compute * _NS / billed_ns)}/GPU s "
                        f"(amount / billed time); gpuledger's rules {_rate(rate)}/GPU s{every}",
                    )
                )
        elif fit.price_factor != 1 and rate is not None:
            causes.append(
                Cause(
                    "price",
                    (fit.price_factor - 1) * charged,
                    f"the endpoint's rows match {_rate(rate * fit.price_factor)}/GPU s; "
                    f"gpuledger's rules {_rate(rate)}/GPU s{every}"
                    + (" (one period only: or GPU time billed otherwise)" if fit.single else ""),
                )
            )
        return adjustment

    def _resource(self, causes: list[Cause], resource: str, adjustment: tuple[str, ...]) -> None:
        """The ``cpu`` or ``memory`` cause: the invoice's part less gpuledger's charges for it
        (the rules as they are), and what the difference is likely to be."""
        invoiced = self.part(resource)
        ledger = self.base.resource_usd[resource]
        if not invoiced and not ledger:
            return
        name = "CPU" if resource == "cpu" else "memory"
        if not ledger:
            # RunPod's CPU workers, or a platform whose CPU gpuledger's rules do not charge.
            causes.append(
                Cause(
                    resource,
                    invoiced,
                    f"the invoice's {resource} amount; gpuledger's rules charge no {name} here",
                )
            )
            return
        # Amounts this small are told apart to the export's rounding: a micro-dollar a line.
        close = max(Fraction(len(self.ledger_lines), 1_000_000), abs(invoiced) / 1000)
        if abs(invoiced - ledger) <= close:
            return  # the same: what the rounding leaves is unexplained, as for the GPU
        detail = f"invoiced {_usd(invoiced)} of {name}; gpuledger's rules charge {_usd(ledger)}"
        flipped = self.tallies[adjustment].resource_usd[resource]
        if adjustment and abs(invoiced - flipped) <= close:
            words = " and ".join(_FLIP_WORDS[flip] for flip in adjustment)
            detail += (
                f", {_usd(flipped)} with the {words} billed as the platform bills it "
                "(the reservation matches)"
            )
        else:
            detail += " (the worker's reservation"
            if flipped:
                detail += f": the invoice's is {float(invoiced / flipped):.3g} x gpuledger's"
            detail += f"; set the {_SETTING[resource]} setting to what your functions reserve)"
        causes.append(Cause(resource, invoiced - ledger, detail))

    def _flips(self, causes: list[Cause], adjustment: tuple[str, ...]) -> None:
        """The idle and start-up causes of ``adjustment`` (each flip's change to the bill:
        the GPU part where the export itemises its parts, see :meth:`charged`)."""
        before: tuple[str, ...] = ()
        for flip in adjustment:
            after = (*before, flip)
            old, new = self.tallies[before], self.tallies[after]
            usd = self.charged(after) - self.charged(before)
            category = "idle" if flip == "idle" else "startup"
            seconds = abs(new.gpu_ns[category] - old.gpu_ns[category])
            word = _FLIP_WORDS[flip]
            if usd >= 0:
                detail = f"the platform billed {_seconds(seconds)} GPU s of {word}, "
                detail += "which gpuledger's rules do not bill"
            else:
                detail = f"the platform did not bill {_seconds(seconds)} GPU s of {word} "
                detail += "that gpuledger's rules bill"
            causes.append(Cause(flip, usd, detail))
            before = after


def _fit(drafts: Sequence[_Draft]) -> _Fit:
    """The flips (and price) that match one endpoint's rows (see the module docstring)."""
    if not drafts:
        return _Fit()
    amounts = [draft.compute_usd for draft in drafts]

    def ledger(adjustment: tuple[str, ...]) -> list[Fraction]:
        return [draft.charged(adjustment) for draft in drafts]

    def matches(adjustment: tuple[str, ...], factor: Fraction) -> bool:
        return all(
            abs(amount - factor * charged) <= _tolerance(amount)
            for amount, charged in zip(amounts, ledger(adjustment), strict=True)
        )

    for adjustment in ADJUSTMENTS:
        if matches(adjustment, Fraction(1)):
            return _Fit(adjustment)
    if len(drafts) == 1 and ledger(())[0] > 0:
        # One period cannot tell a price from time billed otherwise: the price, said so.
        return _Fit((), amounts[0] / ledger(())[0], single=True)
    if len(drafts) >= 2:
        for adjustment in ADJUSTMENTS:
            charged = sum(ledger(adjustment), Fraction(0))
            if charged > 0:
                factor = sum(amounts, Fraction(0)) / charged
                if matches(adjustment, factor):
                    return _Fit(adjustment, factor)

    def miss(adjustment: tuple[str, ...]) -> Fraction:
        return sum(
            (abs(a - c) for a, c in zip(amounts, ledger(adjustment), strict=True)), Fraction(0)
        )

    best = min(ADJUSTMENTS, key=lambda each: (miss(each), ADJUSTMENTS.index(each)))
    return _Fit(best if miss(best) + _tolerance(sum(amounts, Fraction(0))) < miss(()) else ())


def _usd(amount: Fraction) -> str:
    # As the report writes dollars: six decimals below a dollar, four above.
    return f"${float(amount):,.4f}" if abs(amount) >= 1 else f"${float(amount):.6f}"


def _rate(rate: Fraction) -> str:
    return "$" + f"{float(rate):.8f}".rstrip("0").rstrip(".")


def _seconds(gpu_ns: Fraction | int) -> str:
    return f"{float(Fraction(gpu_ns) / _NS):,.1f}"
