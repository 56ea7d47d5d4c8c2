"""The trued-up chargeback: the invoice's dollars, to the cent, split by the ledger's shares.

Each row of a :class:`~gpuledger.reconcile.Reconciliation` (an endpoint in a period) hands its
invoiced amount to the ledger's owners of that row, pro rata to what the ledger measured they
were charged there (their requests' charges, idle and start-up attributed under the report's
policy, billed with the rule flips that match the invoice: ``ReconcileRow.charges``). Under the
``separate`` policy the workers' own charges are an owner too, ``(idle)``. What no ledger row
explains (a period or endpoint with no ledger rows, a pod the ledger never saw, a Modal object
that is not an App: ``ReconcileRow.residual_usd``) is the ``(residual)``: its own cell and row,
never spread over the others.

Money is exact until the last step: the cells' shares are :class:`~fractions.Fraction` s of the
invoice, then one largest-remainder allocation (:func:`gpuledger.billing.allocate`) over every
cell turns them into whole cents that sum to the invoice's total to the cent, so any grouping of
the cells (the report's rows, FOCUS rows per period, endpoint and owner) sums to it too.

:func:`true_up_focus_rows` makes the cells a FOCUS export's ``BilledCost``: each cell's cents
split over the report's FOCUS rows of its period, endpoint, user and tenant, pro rata to their
``EffectiveCost``, again with :func:`~gpuledger.billing.allocate`, so no cent is lost.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Final

from gpuledger.billing import IDLE_KEY, allocate
from gpuledger.ledger import FocusRow
from gpuledger.reconcile._reconcile import ReconcileRow, Reconciliation

__all__ = [
    "RESIDUAL_KEY",
    "TRUE_UP_BY",
    "TrueUp",
    "TrueUpCell",
    "TrueUpRow",
    "true_up",
    "true_up_focus_rows",
]

RESIDUAL_KEY: Final = "(residual)"
"""The row of invoiced amounts no ledger row explains."""
NO_KEY: Final = "(none)"
TRUE_UP_BY: Final = ("user", "tenant", "endpoint", "platform", "day")
"""What a true-up can be grouped by (a cell is an endpoint, period, user and tenant)."""
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
Owner = tuple[str | None, str | None, str | None, str]
"""(ledger endpoint, user, tenant, kind)."""
Cover = tuple[int, str | None, str | None, str | None]
"""(invoice period start, ledger endpoint, user, tenant): the FOCUS rows a cell covers."""


@dataclasses.dataclass(frozen=True, slots=True)
class TrueUpCell:
    """The invoice's amount for one owner in one endpoint and period.

    ``kind`` is ``usage`` (requests of ``user`` and ``tenant``), ``idle`` (the workers' own
    charges, under ``separate``) or ``residual`` (what no ledger row explains)."""

    period_start_ns: int
    period_end_ns: int
    endpoint: str
    """The reconciliation row's endpoint (the invoice's id for it)."""
    ledger_endpoint: str | None
    """The endpoint the ledger's records name (a Modal App's name where the invoice has its
    id): what ``period_charges`` and the FOCUS rows carry. None for the residual."""
    user: str | None
    tenant: str | None
    kind: str
    measured_usd: Fraction
    """What the ledger measured the owner was charged here (its share's weight)."""
    invoiced_usd: Fraction
    """Its exact share of the invoice."""
    cents: int
    """Its share in whole cents (the cells sum to the invoice's total to the cent)."""

    @property
    def billed_usd(self) -> Fraction:
        """:attr:`cents` in dollars: what a chargeback (or FOCUS ``BilledCost``) shows."""
        return Fraction(self.cents, 100)


@dataclasses.dataclass(frozen=True, slots=True)
class TrueUpRow:
    """The cells of one group: what the ledger measured, and their share of the invoice."""

    key: str
    measured_usd: Fraction
    invoiced_usd: Fraction
    cents: int
    cells: int

    @property
    def billed_usd(self) -> Fraction:
        return Fraction(self.cents, 100)


@dataclasses.dataclass(frozen=True, slots=True)
class TrueUp:
    """The invoice split over the ledger's owners, cell by cell."""

    reconciliation: Reconciliation
    cells: tuple[TrueUpCell, ...]
    """Per period x endpoint x user x tenant (and kind), sorted so."""
    total_cents: int
    """The invoice's total to the cent; the cells' cents sum to it."""
    unbilled_usd: Fraction
    """Ledger charges in rows the invoice bills nothing for: in no cell."""

    def rows(self, by: str) -> list[TrueUpRow]:
        """The cells grouped by ``by`` (:data:`TRUE_UP_BY`); ``(idle)`` and ``(residual)`` are
        rows of their own whatever the grouping. Highest first (by day: in date order), the
        two special rows last."""
        if by not in TRUE_UP_BY:
            raise ValueError(f"cannot true up by {by!r}: choose one of {', '.join(TRUE_UP_BY)}")
        platform = self.reconciliation.invoice.platform
        groups: dict[str, list[TrueUpCell]] = {}
        for cell in self.cells:
            groups.setdefault(_key(cell, by, platform), []).append(cell)
        rows = [
            TrueUpRow(
                key=key,
                measured_usd=sum((cell.measured_usd for cell in cells), Fraction(0)),
                invoiced_usd=sum((cell.invoiced_usd for cell in cells), Fraction(0)),
                cents=sum(cell.cents for cell in cells),
                cells=len(cells),
            )
            for key, cells in groups.items()
        ]

        def order(row: TrueUpRow) -> tuple[int, int, str]:
            special = (IDLE_KEY, RESIDUAL_KEY)
            rank = 1 + special.index(row.key) if row.key in special else 0
            return (rank, 0 if by == "day" else -row.cents, row.key)

        return sorted(rows, key=order)


def _key(cell: TrueUpCell, by: str, platform: str) -> str:
    if cell.kind == "residual":
        return RESIDUAL_KEY
    if cell.kind == "idle":
        return IDLE_KEY
    if by == "user":
        return cell.user or NO_KEY
    if by == "tenant":
        return cell.tenant or NO_KEY
    if by == "endpoint":
        return cell.endpoint
    if by == "platform":
        return platform
    start = _EPOCH + dt.timedelta(microseconds=cell.period_start_ns // 1000)
    return start.date().isoformat()


def true_up(reconciliation: Reconciliation) -> TrueUp:
    """The invoice of ``reconciliation`` split over the ledger's owners, row by row (see the
    module docstring), in whole cents summing to the invoice's total."""
    drafts: list[tuple[ReconcileRow, Owner, Fraction, Fraction]] = []
    unbilled = Fraction(0)
    for row in reconciliation.rows:
        if not row.lines:
            unbilled += row.attributed_usd
            continue
        residual = row.residual_usd
        shared = row.invoiced_usd - residual
        owners = _owners(row)
        if shared and not owners:  # nothing in the ledger to share it by
            residual, shared = row.invoiced_usd, Fraction(0)
        if residual:
            drafts.append((row, (None, None, None, "residual"), Fraction(0), residual))
        if shared:
            weights = {owner: usd for owner, (usd, _) in owners.items()}
            total = sum(weights.values(), Fraction(0))
            if total == 0:  # unpriced: by GPU time instead
                weights = {owner: ns for owner, (_, ns) in owners.items()}
                total = sum(weights.values(), Fraction(0))
            for owner in sorted(owners, key=_owner_order):
                share = shared * weights[owner] / total
                drafts.append((row, owner, owners[owner][0], share))
    cents = allocate([amount * 100 for *_, amount in drafts])
    cells = [
        TrueUpCell(
            period_start_ns=row.period_start_ns,
            period_end_ns=row.period_end_ns,
            endpoint=row.endpoint,
            ledger_endpoint=ledger_endpoint,
            user=user,
            tenant=tenant,
            kind=kind,
            measured_usd=measured,
            invoiced_usd=amount,
            cents=allotted,
        )
        for (row, (ledger_endpoint, user, tenant, kind), measured, amount), allotted in zip(
            drafts, cents, strict=True
        )
    ]
    cells.sort(
        key=lambda cell: (
            cell.period_start_ns,
            cell.endpoint,
            cell.kind != "usage",
            cell.kind,
            cell.ledger_endpoint or "",
            cell.user or "",
            cell.tenant or "",
        )
    )
    return TrueUp(
        reconciliation=reconciliation,
        cells=tuple(cells),
        total_cents=round(reconciliation.invoice.total_usd * 100),
        unbilled_usd=unbilled,
    )


def _owners(row: ReconcileRow) -> dict[Owner, tuple[Fraction, Fraction]]:
    """Per owner of the row's ledger charges: dollars and GPU-ns (the weights), where either is
    more than nothing."""
    owners: dict[Owner, tuple[Fraction, Fraction]] = {}
    for charge in row.charges:
        record = charge.record
        owner: Owner = (
            (charge.endpoint, record.user_id, record.tenant, "usage")
            if record is not None
            else (charge.endpoint, None, None, "idle")
        )
        usd, ns = owners.get(owner, (Fraction(0), Fraction(0)))
        owners[owner] = (usd + charge.charges.total_usd, ns + charge.charges.billed_gpu_ns)
    return {owner: value for owner, value in owners.items() if value[0] or value[1]}


def _owner_order(owner: Owner) -> tuple[str, str, str, str]:
    ledger_endpoint, user, tenant, kind = owner
    return (kind, ledger_endpoint or "", user or "", tenant or "")


def true_up_focus_rows(
    result: TrueUp, rows: Iterable[FocusRow], *, billing_account_id: str | None = None
) -> list[FocusRow]:
    """``rows`` (:func:`gpuledger.ledger.focus_rows` of the report's charges, cut at the
    invoice's periods: hours are, for any bucket of an hour or more) with ``BilledCost`` from
    ``result``, and rows of its own for what they cannot carry; sorted as ``focus_rows`` sorts.

    A cell covers the rows of the invoice's platform in its period with its ledger endpoint,
    user and tenant (the ``(idle)`` cell: the workers' own rows, no user or tenant); its cents
    are split over them pro rata to their ``EffectiveCost`` (by GPU-seconds where that is 0,
    evenly where both are) in whole cents (:func:`~gpuledger.billing.allocate`). Cells that
    cover the same rows (``(idle)`` and requests with no user or tenant) share them. A cell
    covering no row (idle time the platform billed and the report's rules do not) and the
    residual are rows of their own: no worker, no quantity, ``EffectiveCost`` 0, the category
    ``idle`` or ``request`` by the cell's kind, else ``residual`` with the invoice's endpoint
    as the resource. So ``BilledCost`` adds up to the invoice's total to the cent and
    ``EffectiveCost`` stays the report's. ValueError if a row crosses an invoice period's
    edge."""
    listed = list(rows)
    platform = result.reconciliation.invoice.platform
    periods = sorted({(cell.period_start_ns, cell.period_end_ns) for cell in result.cells})
    starts = [start for start, _ in periods]
    covered: dict[Cover, list[int]] = {}
    for index, row in enumerate(listed):
        if row.platform != platform:
            continue  # not the invoice's: billed nothing
        at = bisect.bisect_right(starts, row.period_start_ns) - 1
        inside = at >= 0 and row.period_start_ns < periods[at][1]
        edge = periods[at][1] if inside else starts[at + 1] if at + 1 < len(starts) else None
        if edge is not None and row.period_end_ns > edge:
            raise ValueError(
                f"a FOCUS row from {row.period_start_ns} to {row.period_end_ns} ns crosses an "
                f"edge of the invoice's periods at {edge} ns: cut the charges at its periods"
            )
        if inside:
            key = (periods[at][0], row.endpoint, row.user, row.tenant)
            covered.setdefault(key, []).append(index)
    pools: dict[Cover, list[TrueUpCell]] = {}
    own: list[FocusRow] = []
    for cell in result.cells:
        if cell.kind == "residual":
            own.append(_own_row(cell, platform, billing_account_id))
        else:
            cover = (cell.period_start_ns, cell.ledger_endpoint, cell.user, cell.tenant)
            pools.setdefault(cover, []).append(cell)
    billed: dict[int, int] = {}
    for cover, cells in pools.items():
        indexes = covered.get(cover)
        if not indexes:
            own.extend(_own_row(cell, platform, billing_account_id) for cell in cells)
            continue
        cents = sum(cell.cents for cell in cells)
        weights = _weights([listed[index] for index in indexes])
        total = sum(weights, Fraction(0))
        shares = allocate([cents * weight / total for weight in weights])
        billed.update(zip(indexes, shares, strict=True))
    out = [
        dataclasses.replace(row, billed_usd=Fraction(billed[index], 100))
        if index in billed
        else row
        for index, row in enumerate(listed)
    ]
    out.extend(own)
    out.sort(key=lambda row: row.sort_key)
    return out


def _weights(rows: Sequence[FocusRow]) -> list[Fraction]:
    """What a cell's cents are split by over ``rows``: their cost, else their GPU-seconds, else
    one each."""
    costs = [row.cost_usd for row in rows]
    if any(costs):
        return costs
    seconds = [
        row.quantity if row.quantity is not None and row.category != "fee" else Fraction(0)
        for row in rows
    ]
    if any(seconds):
        return seconds
    return [Fraction(1)] * len(rows)


def _own_row(cell: TrueUpCell, platform: str, billing_account_id: str | None) -> FocusRow:
    """A cell's row of its own: the residual, or an owner's share no report row carries."""
    residual = cell.kind == "residual"
    return FocusRow(
        period_start_ns=cell.period_start_ns,
        period_end_ns=cell.period_end_ns,
        billing_account_id=billing_account_id or platform,
        platform=platform,
        gpu_model=None,
        region=None,
        worker=None,
        endpoint=cell.endpoint if residual else cell.ledger_endpoint,
        user=cell.user,
        tenant=cell.tenant,
        category="residual" if residual else "idle" if cell.kind == "idle" else "request",
        quantity=None,
        unit_price_usd=None,
        cost_usd=Fraction(0),
        billed_usd=cell.billed_usd,
        pricing_version=None,
        provisional=False,
    )
