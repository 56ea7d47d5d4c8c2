"""The report's charges per period of time: what each request, and each worker on its own, was
charged within each hour (or day, or any fixed period) of UTC.

Invoices come in time buckets (RunPod's billing API per hour or day, Modal's billing report per
hour or day) and FinOps FOCUS rows are charge periods, so comparing with a bill or exporting to
one needs the report's dollars cut at the same boundaries. :func:`period_charges` bills the same
workers with the same rules and attribution policy as :func:`~gpuledger.ledger.aggregate`, then
splits each attributed line at the period boundaries it crosses, pro rata to its time (exactly:
the parts are :class:`~fractions.Fraction` s of its GPU time). A fee falls in the period where its
request started; a rounding line (the time a span's rounding adds after its end) where that time
lies. So the charges of all periods add up to the report's total exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Final

from gpuledger._record import InvocationRecord
from gpuledger.billing import (
    Charges,
    as_recorded,
    attribute,
    bill_workers,
    frozen_rules,
    owned_lines,
    rate_key,
    workers_of,
)

if TYPE_CHECKING:
    from gpuledger.billing import Line, Worker, WorkerBill
    from gpuledger.ledger._report import RulesFor

__all__ = ["HOUR_NS", "PeriodCharge", "period_charges"]

HOUR_NS: Final = 3_600_000_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class PeriodCharge:
    """What one request (``record``), or one worker on its own (``record`` None: its idle time
    and rounding under the ``separate`` policy), was charged within one period."""

    period_start_ns: int
    """UTC Unix nanoseconds, a multiple of the period."""
    period_end_ns: int
    worker: str
    """The billing worker."""
    platform: str
    """The platform the worker was priced on."""
    endpoint: str | None
    record: InvocationRecord | None
    charges: Charges
    provisional: bool
    """The worker may still be running (its stop is inferred and in the future)."""


def period_charges(
    records: Iterable[InvocationRecord],
    *,
    period_ns: int = HOUR_NS,
    policy: str = "separate",
    rules_for: RulesFor = frozen_rules,
    fallback: RulesFor | None = None,
    stops: Mapping[str, int] | None = None,
    now_ns: int | None = None,
) -> list[PeriodCharge]:
    """The charges of ``records`` per period of ``period_ns`` and per owner (see the module
    docstring), billed as :func:`~gpuledger.ledger.aggregate` bills them (same keywords).
    Unpriced records are left out; a worker with no rules counts its records as recorded, in
    the period of each record's start. Sorted by period, worker, then record start."""
    if period_ns <= 0:
        raise ValueError(f"period_ns must be positive, got {period_ns}")
    listed = list(records)
    by_id = {record.record_id: record for record in listed}
    out: list[PeriodCharge] = []
    workers = workers_of(listed, rules_for=rules_for, fallback=fallback, stops=stops)
    for worker, worker_bill in bill_workers(workers):
        running = now_ns is not None and worker.stop_inferred and worker.timeline.stop_ns > now_ns
        out.extend(_worker_periods(worker, worker_bill, by_id, period_ns, policy, running))
    out.sort(
        key=lambda charge: (
            charge.period_start_ns,
            charge.worker,
            charge.record is None,
            charge.record.start_ns if charge.record is not None else 0,
            charge.record.record_id if charge.record is not None else "",
        )
    )
    return out


def _worker_periods(
    worker: Worker,
    worker_bill: WorkerBill,
    by_id: Mapping[str, InvocationRecord],
    period_ns: int,
    policy: str,
    running: bool,
) -> list[PeriodCharge]:
    first = by_id[worker.record_ids[0]]
    platform = first.pricing_platform or first.platform
    versions = {worker.pricing_version} if worker.pricing_version else set()

    def entry(record: InvocationRecord | None, period: int) -> PeriodCharge:
        return PeriodCharge(
            period_start_ns=period,
            period_end_ns=period + period_ns,
            worker=worker.key,
            platform=platform,
            endpoint=(record or first).endpoint,
            record=record,
            charges=Charges(set(versions)),
            provisional=running,
        )

    if worker.rules is None:
        # No rules to bill it by: what its records say they cost, if anything.
        out = []
        per_request, _ = attribute(worker, worker_bill, policy)
        for record_id in worker.record_ids:
            record = by_id[record_id]
            recorded = as_recorded(record, per_request[record_id].gpu_ns["request"])
            if recorded is not None:
                charge = entry(record, _floor(record.start_ns, period_ns))
                charge.charges.merge(recorded)
                out.append(charge)
        return out
    rates = worker.rules.per_gpu_second_by_resource(worker.timeline.gpu_count)
    rate = rate_key(rates["gpu"], rates["cpu"], rates["memory"])
    fee = worker.rules.execution_fee_usd
    cells: dict[tuple[str | None, int], PeriodCharge] = {}
    for owner_id, line, gpu_ns in owned_lines(worker, worker_bill, policy):
        for period, part in _split(line, gpu_ns, period_ns):
            cell = cells.get((owner_id, period))
            if cell is None:
                owner = None if owner_id is None else by_id[owner_id]
                cell = cells[(owner_id, period)] = entry(owner, period)
            if line.category == "fee":
                cell.charges.add_fee(fee)
            else:
                cell.charges.add_time(rate, line.category, part)
    return list(cells.values())


def _floor(instant_ns: int, period_ns: int) -> int:
    return instant_ns - instant_ns % period_ns


def _split(line: Line, gpu_ns: int | Fraction, period_ns: int) -> list[tuple[int, int | Fraction]]:
    """``gpu_ns`` of ``line`` cut at period boundaries, pro rata to the time in each period."""
    start, end = line.start_ns, line.end_ns
    first = _floor(start, period_ns)
    if end <= first + period_ns or end <= start:
        return [(first, gpu_ns)]
    duration = end - start
    parts: list[tuple[int, int | Fraction]] = []
    period = first
    while period < end:
        overlap = min(end, period + period_ns) - max(start, period)
        if overlap > 0:
            parts.append((period, Fraction(gpu_ns) * overlap / duration))
        period += period_ns
    return parts
