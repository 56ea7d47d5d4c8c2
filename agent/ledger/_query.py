"""Reports computed in the database: ``gpuledger report`` over a ledger of any size.

:func:`report` gives the rows :func:`~gpuledger.ledger._report.aggregate` gives for the same
records, without reading the records into Python:

- What each record measured (invocations, cold starts, errors, init, busy GPU seconds, energy,
  outgoing calls and their wait, tokens) is one ``GROUP BY`` in the database. Measured floats
  are summed as integers of 1e-9 of their unit (:func:`~gpuledger.ledger._report.fixed`, the
  same arithmetic in SQL), so a sum is exact in any order and the same on SQLite, on
  PostgreSQL and in ``aggregate``.
- The p50 and p95 durations: PostgreSQL's ``percentile_cont`` in that same query (linear
  interpolation between closest ranks, as ``aggregate``); SQLite has none, so the durations
  come back once, sorted by the database, and each group's ranks (and the overall ones, for
  the TOTAL) are counted as they stream past, keeping only the values the interpolation reads.
- Dollars come from the billing engine, worker by worker: the few columns a worker's bill
  needs stream from the database ordered by worker, each worker is billed
  (:func:`gpuledger.billing.bill`) and its bill split under the policy straight into the
  groups of its requests (:func:`gpuledger.billing.charge_into`). The rules a worker is billed
  by are asked of its first record, read whole, a few hundred workers per query.

Memory holds one batch of workers' requests and one row per group, not the ledger. Grouped by
``target`` (an invocation counts under each target it called; the targets are JSON in the row)
the report is computed from the records (``aggregate``).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from gpuledger.billing import (
    Charges,
    as_recorded,
    attribute,
    charge_into,
    frozen_rules,
    worker_lines,
    worker_of,
    worker_rules,
)
from gpuledger.ledger._report import (
    GROUP_BY,
    IDLE_KEY,
    NO_KEY,
    Measures,
    ReportRow,
    aggregate,
    build_row,
    idle_row,
    totals,
)
from gpuledger.ledger._report import _cost_order as cost_order

if TYPE_CHECKING:
    from gpuledger.billing import Worker
    from gpuledger.ledger._report import RulesFor
    from gpuledger.ledger._schema import Ledger

__all__ = ["Report", "report"]

_DAY_NS: Final = 86_400_000_000_000
_EPOCH_DAY: Final = dt.date(1970, 1, 1)
_WORKERS_PER_BATCH: Final = 256
"""Workers whose first records are read in one query (and whose requests are held meanwhile)."""
_ROWS_PER_BATCH: Final = 50_000
"""...or fewer, when their requests reach this many."""


class Report(NamedTuple):
    """A report's rows, sorted as ``aggregate`` sorts them, and their TOTAL (None: no rows)."""

    rows: list[ReportRow]
    total: ReportRow | None


class _BillingRow(NamedTuple):
    """The columns of a record that billing reads (``gpuledger.billing.Billed``)."""

    record_id: str
    start_ns: int
    end_ns: int
    request_startup_s: float | None
    worker_start_ns: int | None
    worker_ready_ns: int | None
    cold: bool
    init_duration_s: float | None
    gpu_count: int
    cost_usd: float | None
    cost_execution_usd: float | None
    cost_coldstart_usd: float | None
    pricing_version: str | None
    outcome: str


_BILLING_COLUMNS: Final = ", ".join(_BillingRow._fields)


@dataclasses.dataclass(slots=True)
class _Group:
    charges: Charges = dataclasses.field(default_factory=Charges)
    priced: int = 0
    unpriced: int = 0
    provisional: int = 0


def report(
    ledger: Ledger,
    by: str,
    *,
    since_ns: int | None = None,
    policy: str = "separate",
    rules_for: RulesFor = frozen_rules,
    fallback: RulesFor | None = None,
    now_ns: int | None = None,
) -> Report:
    """The report of the ledger's records (those started since ``since_ns``) grouped ``by``,
    billed and attributed as :func:`~gpuledger.ledger._report.aggregate` bills them (the
    keywords are its own; the workers' observed stops are read from the ledger)."""
    if by not in GROUP_BY:
        raise ValueError(f"cannot group by {by!r}: choose one of {', '.join(GROUP_BY)}")
    stops = ledger.read_stops()
    if by == "target":
        records = list(ledger.read(since_ns=since_ns))
        if not records:
            return Report([], None)
        billing: dict[str, Any] = {
            "policy": policy,
            "rules_for": rules_for,
            "fallback": fallback,
            "stops": stops,
            "now_ns": now_ns,
        }
        every = totals(aggregate(records, "platform", **billing))
        return Report(aggregate(records, "target", **billing), every)
    sql = _Sql(ledger.DIALECT, by, since_ns, ledger._PARAMETER)
    measures: dict[Any, Measures] = {}
    quantiles: dict[Any, tuple[float, float]] = {}
    counted: dict[Any, int] = {}
    for row in ledger._query(sql.measures(), sql.parameters):
        key, values = row[0], row[1:]
        measures[key] = Measures(*(int(value or 0) for value in values[: len(_MEASURES)]))
        counted[key] = int(values[len(_MEASURES)])
        if sql.postgres:
            quantiles[key] = _floats(values[len(_MEASURES) + 1 :])
    if not measures:
        return Report([], None)
    if sql.postgres:
        ((p50, p95),) = ledger._query(sql.total_percentiles(), sql.parameters)
        whole = _floats((p50, p95))
    else:
        quantiles, whole = _picked(ledger._stream(sql.sorted_durations(), sql.parameters), counted)
    groups, idle, idle_workers, idle_provisional = _bill(
        ledger, sql, policy, rules_for, fallback, stops, now_ns
    )
    rows = []
    for key, measured in measures.items():
        group = groups.get(key) or _Group()
        p50_s, p95_s = quantiles.get(key, (math.nan, math.nan))
        rows.append(
            build_row(
                _key_text(by, key),
                measured,
                group.charges,
                priced=group.priced,
                unpriced=group.unpriced,
                provisional=group.provisional,
                p50_s=p50_s,
                p95_s=p95_s,
            )
        )
    if idle_workers:
        rows.append(idle_row(idle, idle_workers, idle_provisional))
    total = totals(rows, p50_s=whole[0], p95_s=whole[1])
    if by == "day":
        rows.sort(key=lambda row: (row.key == IDLE_KEY, row.key))
    else:
        rows.sort(key=cost_order)
    return Report(rows, total)


# --- billing, worker by worker -------------------------------------------------------------------


def _bill(
    ledger: Ledger,
    sql: _Sql,
    policy: str,
    rules_for: RulesFor,
    fallback: RulesFor | None,
    stops: Mapping[str, int],
    now_ns: int | None,
) -> tuple[dict[Any, _Group], Charges, int, int]:
    """Every worker's bill split into the groups of its requests: per group its charges and
    counts, then the workers' own charges (idle), how many workers had any, and how many of
    those may still be running."""
    groups: dict[Any, _Group] = {}
    idle = Charges()
    tally = {"workers": 0, "provisional": 0}
    pending: list[tuple[str, list[_BillingRow], list[Any]]] = []
    held = 0

    def settle() -> None:
        firsts = ledger.read_by_id([rows[0].record_id for _, rows, _ in pending])
        for key, rows, keys in pending:
            first = firsts.get(rows[0].record_id)
            # Deleted since the stream read it: billed as unpriced.
            rules, version = (
                (None, None) if first is None else worker_rules(first, rules_for, fallback)
            )
            worker = worker_of(key, rows, rules, version, stops.get(key))
            _charge(worker, rows, keys, policy, now_ns, groups, idle, tally)
        pending.clear()

    current: str | None = None
    rows: list[_BillingRow] = []
    keys: list[Any] = []
    for row in ledger._stream(sql.billing_rows(), sql.parameters):
        worker_key = row[0]
        if worker_key != current:
            if current is not None:
                pending.append((current, rows, keys))
                held += len(rows)
                if len(pending) >= _WORKERS_PER_BATCH or held >= _ROWS_PER_BATCH:
                    settle()
                    held = 0
            current, rows, keys = worker_key, [], []
        # The database gives each column's type (cold: 0 or 1, which reads as a bool).
        rows.append(_BillingRow._make(row[1:-1]))
        keys.append(row[-1])
    if current is not None:
        pending.append((current, rows, keys))
    if pending:
        settle()
    return groups, idle, tally["workers"], tally["provisional"]


def _charge(
    worker: Worker,
    rows: Sequence[_BillingRow],
    keys: Sequence[Any],
    policy: str,
    now_ns: int | None,
    groups: dict[Any, _Group],
    idle: Charges,
    tally: dict[str, int],
) -> None:
    """One worker's bill into its requests' groups, as ``aggregate`` does per request."""
    lines = worker_lines(worker)
    running = now_ns is not None and worker.stop_inferred and worker.timeline.stop_ns > now_ns
    group_of = dict(zip((row.record_id for row in rows), keys, strict=True))
    requests = collections.Counter(keys)
    touched: dict[Any, _Group] = {}
    for key, count in requests.items():
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group()
        touched[key] = group
        group.provisional += running * count
    versions = {worker.pricing_version} if worker.pricing_version else set()
    if worker.rules is None:
        # No rules to bill it by: what each record says it cost, if anything (per request).
        per_request, _ = attribute(worker, lines, policy)
        for row in rows:
            charges = per_request[row.record_id]
            recorded = as_recorded(row, charges.gpu_ns["request"])
            group = touched[group_of[row.record_id]]
            if recorded is not None:
                group.charges.merge(recorded)
                group.priced += 1
            else:
                group.charges.merge(charges)
                group.unpriced += 1
        return
    own = Charges()
    charge_into(
        worker,
        lines,
        policy,
        lambda owner: own if owner is None else touched[group_of[owner]].charges,
    )
    for key, group in touched.items():
        group.charges.versions |= versions
        group.priced += requests[key]
    own.versions |= versions
    if own.charged():
        idle.merge(own)
        tally["workers"] += 1
        tally["provisional"] += running


# --- percentiles on SQLite -----------------------------------------------------------------------


def _picked(
    ordered: Iterator[tuple[Any, ...]], counts: Mapping[Any, int]
) -> tuple[dict[Any, tuple[float, float]], tuple[float, float]]:
    """p50 and p95 per group, and over all groups, from ``(group, duration)`` rows sorted by
    duration, ``counts`` saying how many each group has: one pass counts each group's rank and
    the overall rank, and keeps only the values at the ranks the interpolation reads."""
    wanted = {key: dict.fromkeys(_ranks(count), math.nan) for key, count in counts.items()}
    seen = dict.fromkeys(counts, 0)
    total = sum(counts.values())
    overall = dict.fromkeys(_ranks(total), math.nan)
    for index, (key, duration) in enumerate(ordered):
        rank = seen[key]
        seen[key] = rank + 1
        ranks = wanted[key]
        if rank in ranks:
            ranks[rank] = float(duration)
        if index in overall:
            overall[index] = float(duration)
    per_group = {
        key: (_from_ranks(ranks, counts[key], 0.50), _from_ranks(ranks, counts[key], 0.95))
        for key, ranks in wanted.items()
        if counts[key]
    }
    return per_group, (_from_ranks(overall, total, 0.50), _from_ranks(overall, total, 0.95))


def _ranks(count: int) -> set[int]:
    ranks: set[int] = set()
    for fraction in (0.50, 0.95):
        position = fraction * (count - 1)
        lower = math.floor(position)
        ranks.update((lower, min(lower + 1, count - 1)))
    return ranks


def _from_ranks(values: Mapping[int, float], count: int, fraction: float) -> float:
    """``_percentile`` of the sorted values, given only those at the ranks it reads."""
    if count <= 0:
        return math.nan
    position = fraction * (count - 1)
    lower = math.floor(position)
    upper = min(lower + 1, count - 1)
    return values[lower] + (values[upper] - values[lower]) * (position - lower)


def _floats(values: Sequence[Any]) -> tuple[float, float]:
    p50, p95 = (math.nan if value is None else float(value) for value in values)
    return p50, p95


def _key_text(by: str, key: Any) -> str:
    if by == "day":
        return (_EPOCH_DAY + dt.timedelta(days=int(key))).isoformat()
    return str(key)


# --- the SQL -------------------------------------------------------------------------------------


_MEASURES: Final = (
    "COUNT(*)",
    "SUM(CASE WHEN cold <> 0 THEN 1 ELSE 0 END)",
    "SUM(CASE WHEN outcome NOT IN ('ok', 'rejected') THEN 1 ELSE 0 END)",
    "COUNT(CASE WHEN cold <> 0 THEN {init_duration_s} END)",
    "SUM(CASE WHEN cold <> 0 THEN {init_duration_s} END)",
    "COUNT({busy_gpu_seconds})",
    "SUM({busy_gpu_seconds})",
    "SUM(CASE WHEN busy_gpu_seconds IS NOT NULL THEN {billed_gpu_seconds} END)",
    "COUNT({energy_j})",
    "SUM({energy_j})",
    "COUNT(external_calls)",
    "SUM(external_calls)",
    "COUNT(CASE WHEN external_calls IS NOT NULL THEN {external_wait_seconds} END)",
    "SUM(CASE WHEN external_calls IS NOT NULL THEN {external_wait_seconds} END)",
    "COUNT(CASE WHEN external_calls IS NOT NULL THEN {external_wait_cost_usd} END)",
    "SUM(CASE WHEN external_calls IS NOT NULL THEN {external_wait_cost_usd} END)",
    "COUNT(input_tokens)",
    "SUM(input_tokens)",
    "COUNT(output_tokens)",
    "SUM(output_tokens)",
    "SUM(CASE WHEN outcome = 'rejected' THEN 1 ELSE 0 END)",
    "COUNT({first_item_s})",
    "SUM({first_item_s})",
)
"""The columns of :class:`~gpuledger.ledger._report.Measures`, in order, in SQL; ``{column}``
is that float column as an integer of 1e-9 of its unit."""
_FIXED_COLUMNS: Final = (
    "init_duration_s",
    "busy_gpu_seconds",
    "billed_gpu_seconds",
    "energy_j",
    "external_wait_seconds",
    "external_wait_cost_usd",
    "first_item_s",
)
_NULLABLE_KEYS: Final = {
    "user": "user_id",
    "tenant": "tenant",
    "endpoint": "endpoint",
    "platform": "platform",
    "version": "service_version",
    "model": "model",
}


class _Sql:
    """The queries of one report, in the ledger's dialect."""

    def __init__(self, dialect: str, by: str, since_ns: int | None, parameter: str) -> None:
        self.postgres = dialect == "postgresql"
        self.parameters: list[object] = []
        self.where = ""
        if since_ns is not None:
            self.where = f"WHERE start_ns >= {parameter}"
            self.parameters.append(max(-(2**63), min(since_ns, 2**63 - 1)))
        if by in _NULLABLE_KEYS:
            column = _NULLABLE_KEYS[by]
            self.key = f"COALESCE(NULLIF({column}, ''), '{NO_KEY}')"
        elif by == "invocation":
            self.key = "invocation_id"
        else:  # day: the UTC day number, floor(start_ns / one day) in integers
            day = _DAY_NS
            if self.postgres:  # '%' is psycopg's placeholder
                self.key = f"((start_ns - MOD(MOD(start_ns, {day}) + {day}, {day})) / {day})"
            else:
                self.key = f"((start_ns - ((start_ns % {day}) + {day}) % {day}) / {day})"
        text = ' COLLATE "C"' if self.postgres else ""
        self.worker = (
            f"COALESCE(NULLIF(billing_worker, ''), NULLIF(worker_id, ''), "
            f"'record:' || record_id){text}"
        )
        self.text = text

    def fixed(self, column: str) -> str:
        """``column`` (a float) in integers of 1e-9 of its unit, as ``_report.fixed`` does."""
        if self.postgres:
            return (
                f"TRUNC({column} * CAST(1e9 AS DOUBLE PRECISION) "
                f"+ CAST(0.5 AS DOUBLE PRECISION))::BIGINT"
            )
        return f"CAST({column} * 1e9 + 0.5 AS INTEGER)"

    def measures(self) -> str:
        fixed = {column: self.fixed(column) for column in _FIXED_COLUMNS}
        columns = [measure.format(**fixed) for measure in _MEASURES]
        columns.append("COUNT(duration_s)")
        if self.postgres:
            columns += [self._percentile(0.5), self._percentile(0.95)]
        return (
            f"SELECT {self.key} AS group_key, {', '.join(columns)} "
            f"FROM invocations {self.where} GROUP BY 1"
        )

    @staticmethod
    def _percentile(fraction: float) -> str:
        return (
            f"percentile_cont(CAST({fraction!r} AS DOUBLE PRECISION)) "
            "WITHIN GROUP (ORDER BY duration_s)"
        )

    def total_percentiles(self) -> str:
        return (
            f"SELECT {self._percentile(0.5)}, {self._percentile(0.95)} "
            f"FROM invocations {self.where}"
        )

    def _and(self, condition: str) -> str:
        return f"{self.where} AND {condition}" if self.where else f"WHERE {condition}"

    def sorted_durations(self) -> str:
        return (
            f"SELECT {self.key} AS group_key, duration_s FROM invocations "
            f"{self._and('duration_s IS NOT NULL')} ORDER BY 2"
        )

    def billing_rows(self) -> str:
        return (
            f"SELECT {self.worker} AS billing_key, {_BILLING_COLUMNS}, {self.key} AS group_key "
            f"FROM invocations {self.where} ORDER BY 1, start_ns, record_id{self.text}"
        )
