"""``gpuledger report``: cost, GPU time and cold starts from the ledger, grouped for chargeback."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import click

from gpuledger._errors import ConfigError, GpuledgerError, LedgerError
from gpuledger._record import InvocationRecord
from gpuledger._settings import resolve_setting
from gpuledger.billing import POLICIES
from gpuledger.cli import _options
from gpuledger.cli._billing import billing_options, stale_warnings
from gpuledger.cli._reconcile import _load, true_up_report
from gpuledger.ledger import (
    GROUP_BY,
    HOUR_NS,
    REPORT_COLUMNS,
    ReportRow,
    budget_spend,
    default_ledger_location,
    focus_rows,
    ledger_report,
    open_ledger,
    parse_since,
    period_charges,
    totals,
    write_focus_csv,
)
from gpuledger.reconcile import TrueUp, true_up, true_up_focus_rows

__all__ = ["TABLE_COLUMNS", "TableColumn", "report"]

FORMATS = ("table", "json", "csv", "focus")
_UNKNOWN = "-"


def _count(value: int) -> str:
    return f"{value:,}"


def _percent(share: float) -> str:
    return f"{share * 100:.1f}"


def _seconds(seconds: float) -> str:
    return f"{seconds:,.3f}"


def _kilojoules(joules: float) -> str:
    return f"{joules / 1000:,.3f}"


def _usd(amount: float) -> str:
    # Per-request prices are fractions of a cent: six decimals below a dollar, four above.
    return f"{amount:,.4f}" if abs(amount) >= 1 else f"{amount:.6f}"


def _rate(amount: float) -> str:
    return f"{amount:.8f}".rstrip("0")


@dataclasses.dataclass(frozen=True, slots=True)
class TableColumn:
    """One column of the report table: its header, the :class:`ReportRow` field it shows, how a
    known value is written (unknown is always "-"), and whether the default table has it."""

    header: str
    field: str
    format: Callable[[Any], str]
    default: bool


TABLE_COLUMNS: Final = (
    TableColumn("invocations", "invocations", _count, default=True),
    TableColumn("cold", "cold_starts", _count, default=True),
    TableColumn("cold %", "cold_start_share", _percent, default=True),
    TableColumn("init s", "mean_init_s", _seconds, default=True),
    TableColumn("errors", "errors", _count, default=True),
    TableColumn("rejected", "rejected", _count, default=False),
    TableColumn("request GPU s", "request_gpu_s", _seconds, default=False),
    TableColumn("startup GPU s", "startup_gpu_s", _seconds, default=False),
    TableColumn("idle GPU s", "idle_gpu_s", _seconds, default=False),
    TableColumn("rounding GPU s", "rounding_gpu_s", _seconds, default=False),
    TableColumn("billed GPU s", "billed_gpu_s", _seconds, default=True),
    TableColumn("busy GPU s", "busy_gpu_seconds", _seconds, default=False),
    TableColumn("busy %", "busy_share", _percent, default=True),
    TableColumn("energy kJ", "energy_j", _kilojoules, default=False),
    TableColumn("calls", "external_calls", _count, default=False),
    TableColumn("wait s", "external_wait_s", _seconds, default=False),
    TableColumn("wait USD", "external_wait_cost_usd", _usd, default=False),
    TableColumn("fee USD", "fee_usd", _usd, default=False),
    TableColumn("GPU USD", "gpu_usd", _usd, default=False),
    TableColumn("CPU USD", "cpu_usd", _usd, default=False),
    TableColumn("memory USD", "memory_usd", _usd, default=False),
    TableColumn("USD/GPU s", "rate_usd_per_gpu_s", _rate, default=False),
    TableColumn("cost USD", "cost_usd", _usd, default=True),
    TableColumn("pricing", "pricing_version", str, default=False),
    TableColumn("unpriced", "unpriced", _count, default=False),
    TableColumn("provisional", "provisional", _count, default=False),
    TableColumn("tokens in", "input_tokens", _count, default=False),
    TableColumn("tokens out", "output_tokens", _count, default=False),
    TableColumn("1st item s", "mean_first_item_s", _seconds, default=False),
    TableColumn("p50 s", "duration_p50_s", _seconds, default=False),
    TableColumn("p95 s", "duration_p95_s", _seconds, default=True),
)
"""The table's columns in order, after the key column. The default set is what a chargeback
reader needs first (what was run, what it cost, and what explains the cost: cold starts and how
long they took, errors, idle GPU time, slow requests) and fits 100 characters for keys of up to
a dozen characters (user and tenant names, dates); ``--wide`` shows all.
A new column is one entry here."""


@click.command("report")
@_options.ledger_option
@click.option(
    "--by",
    type=click.Choice(GROUP_BY),
    default="user",
    show_default=True,
    help="What each row stands for. By target, an invocation counts under each target it "
    "called, with that target's calls and wait (rows overlap; TOTAL counts each once).",
)
@click.option(
    "--since",
    metavar="WHEN",
    default=None,
    help="Only invocations that started since: 90s, 30m, 24h, 7d, 2w or an ISO date/date-time "
    "(UTC unless it says otherwise).  [default: everything]",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table for people (with a TOTAL row); json or csv for tools (groups only, every column); "
    "focus: a FinOps FOCUS 1.0 CSV of the charges per UTC hour, worker, endpoint, user, tenant "
    "and category (--by does not apply).",
)
@click.option(
    "--wide",
    is_flag=True,
    help="Table: show every column (adds the billed GPU seconds' parts: request, startup, idle, "
    "rounding; fees, the rate and the pricing edition; busy GPU s, energy, outgoing calls, "
    "their wait and its cost, unpriced and provisional counts, rejected requests, tokens in "
    "and out, mean time to a streamed first item, p50 s).",
)
@click.option(
    "--idle",
    "policy",
    type=click.Choice(POLICIES),
    default=None,
    help="Who pays a worker's idle time and rounding: separate (their own row, (idle)), share "
    "(the worker's requests, pro rata to their busy time) or cause (the request whose "
    "keep-warm window or billing span it was).  [default: the attribution setting, else "
    "separate]",
)
@click.option(
    "--true-up",
    "true_up_file",
    metavar="FILE",
    default=None,
    help="Split the platform's own bill (a usage export, as `gpuledger reconcile --usage` "
    "reads) over the groups by their measured shares in each period: rows in whole cents that "
    "add up to the invoice, with what no ledger row explains as (residual). With --format "
    "focus: the FOCUS CSV, its BilledCost from FILE.",
)
@click.option(
    "--platform",
    "true_up_platform",
    type=click.Choice(("runpod", "modal")),
    default=None,
    help="--true-up: whose export FILE is.  [default: detected from its content]",
)
@click.option(
    "--pricing",
    "pricing_file",
    metavar="FILE",
    default=None,
    help="Re-price the recorded workers under this pricing file (merged over the shipped "
    "catalogue): same traffic, other prices.  [default: the rules frozen on the records]",
)
@click.option(
    "--billing-account",
    metavar="ID",
    default=None,
    help="--format focus: your account at the platform, FOCUS's BillingAccountId (gpuledger "
    "cannot see it).  [default: the platform's name]",
)
def report(
    location: str | None,
    by: str,
    since: str | None,
    output_format: str,
    wide: bool,
    policy: str | None,
    true_up_file: str | None,
    true_up_platform: str | None,
    pricing_file: str | None,
    billing_account: str | None,
) -> None:
    """Cost, GPU seconds, cold starts and external wait per user, tenant, endpoint, platform,
    day, invocation or outgoing-call target.

    Costs are the workers' bills, as the platform bills them (start-up, idle time and rounding
    where it bills them), attributed to requests (--idle); the rows add up to the bills, and
    each row's cost is its fees plus its rate times its billed GPU seconds.

    The table shows invocations, cold starts (count, share, mean init), errors, billed GPU
    seconds, busy %, cost USD and p95 duration; --wide shows every column, as json and csv
    always do.

    Unknown values are shown as "-" (table), null (json) or empty (csv), never as zero: busy
    GPU seconds where no GPU was metered, cost where the catalogue had no price.
    """
    since_ns = None
    if since is not None:
        try:
            since_ns = parse_since(since, now_ns=time.time_ns())
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--since'") from None
    if policy is None:
        policy = str(resolve_setting("attribution")[0] or "separate")
    if true_up_file is None and true_up_platform is not None:
        raise click.BadParameter("goes with --true-up", param_hint="'--platform'")
    trued_up = None
    if true_up_file is not None:
        if since is not None:
            raise click.BadParameter(
                "--true-up covers the invoice's periods", param_hint="'--since'"
            )
        if output_format == "focus":  # the report's FOCUS rows, below, billed by the invoice
            reconciliation = _load(
                true_up_file, true_up_platform, None, location, policy, pricing_file
            )
            trued_up = true_up(reconciliation)
        else:
            true_up_report(
                usage_file=true_up_file,
                platform=true_up_platform,
                location=location,
                by=by,
                output_format=output_format,
                policy=policy,
                pricing_file=pricing_file,
            )
            return
    try:
        billing = billing_options(pricing_file, policy)
    except GpuledgerError as exc:
        raise click.ClickException(str(exc)) from None
    target = location if location is not None else default_ledger_location()
    _options.adopt_journal(target)
    records: list[InvocationRecord] = []
    rows: list[ReportRow] = []
    total = None
    marks: dict[str, str] | None = None
    try:
        with open_ledger(target, create=False) as ledger:
            now_ns = time.time_ns()
            if output_format == "focus":  # charges per hour: from the records
                records = list(ledger.read(since_ns=since_ns))
                billing["stops"] = ledger.read_stops()
                billing["now_ns"] = now_ns
            else:  # computed in the database (by target: rows overlap, the total apart)
                rows, total = ledger_report(ledger, by, since_ns=since_ns, now_ns=now_ns, **billing)
                marks = _budget_marks(ledger, by, now_ns)
            versions = ledger.pricing_versions(since_ns=since_ns)
            path = ledger.path
    except LedgerError as exc:
        raise click.ClickException(str(exc)) from None
    for warning in stale_warnings(versions, pricing_file, _options.today()):
        click.echo(warning, err=True)

    if output_format == "focus":
        click.echo(_focus(records, billing, billing_account, trued_up), nl=False)
    elif output_format == "json":
        click.echo(json.dumps([_plain(row, marks) for row in rows], indent=2))
    elif output_format == "csv":
        click.echo(_csv(rows, marks), nl=False)
    elif not rows:
        window = f" since {since}" if since is not None else ""
        click.echo(f"no invocations in {path}{window}")
    else:
        columns = TABLE_COLUMNS if wide else [column for column in TABLE_COLUMNS if column.default]
        click.echo(_table(rows, by, columns, total, marks))


def _focus(
    records: list[InvocationRecord],
    billing: dict[str, Any],
    billing_account: str | None,
    trued_up: TrueUp | None = None,
) -> str:
    """The FOCUS CSV of ``records``' charges per hour, billed as the report bills them; with
    ``trued_up``, BilledCost is the invoice's, and what no row carries has rows of its own."""
    buffer = io.StringIO()
    if trued_up is None:
        charges = period_charges(records, **billing)
        rows = focus_rows(charges, billing_account_id=billing_account)
    else:
        # Cut at the invoice's periods too: the hours are, for any bucket of an hour or more.
        period_ns = math.gcd(HOUR_NS, trued_up.reconciliation.period_ns)
        charges = period_charges(records, period_ns=period_ns, **billing)
        rows = true_up_focus_rows(
            trued_up,
            focus_rows(charges, billing_account_id=billing_account),
            billing_account_id=billing_account,
        )
    write_focus_csv(rows, buffer)
    return buffer.getvalue()


_BUDGET_ORDER: Final = {"over": 2, "near": 1, "ok": 0}


def _budget_marks(ledger: Any, by: str, now_ns: int) -> dict[str, str] | None:
    """Grouped by tenant, user or endpoint with budgets set for that scope: each group's worst
    budget status (``over 30d``, ``near 1d``, ``ok 1h``) by key; None when no budget applies."""
    if by not in ("tenant", "user", "endpoint"):
        return None
    try:
        budgets = [budget for budget in resolve_setting("budgets")[0] if budget.scope == by]
    except ConfigError as error:
        raise click.ClickException(str(error)) from None
    if not budgets:
        return None
    marks: dict[str, tuple[int, str]] = {}
    for spend in budget_spend(ledger, budgets, now_ns=now_ns):
        rank = _BUDGET_ORDER[spend.status]
        if spend.key not in marks or rank > marks[spend.key][0]:
            marks[spend.key] = (rank, f"{spend.status} {spend.budget.window}")
    return {key: mark for key, (_, mark) in marks.items()}


def _plain(row: ReportRow, marks: dict[str, str] | None = None) -> dict[str, object]:
    """The row's public columns as JSON values (unknown is null; NaN too, JSON has none), and
    its budget's status when budgets apply to the grouping."""
    values: dict[str, object] = {}
    for column in REPORT_COLUMNS:
        value = getattr(row, column)
        values[column] = None if isinstance(value, float) and math.isnan(value) else value
    if marks is not None:
        values["budget"] = marks.get(row.key)
    return values


def _csv(rows: list[ReportRow], marks: dict[str, str] | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*REPORT_COLUMNS, *(["budget"] if marks is not None else [])])
    for row in rows:
        writer.writerow(["" if value is None else value for value in _plain(row, marks).values()])
    return buffer.getvalue()


def _table(
    rows: list[ReportRow],
    by: str,
    columns: Sequence[TableColumn],
    total: ReportRow | None = None,
    marks: dict[str, str] | None = None,
) -> str:
    total = total or totals(rows)
    headers = [by, *(column.header for column in columns)]
    body = [_cells(row, columns) for row in rows]
    footer = _cells(total, columns)
    if marks is not None:  # the groups' budgets, last
        headers.append("budget")
        for row, cells in zip(rows, body, strict=True):
            cells.append(marks.get(row.key, _UNKNOWN))
        footer.append("")
    widths = [
        max(len(line[index]) for line in (headers, *body, footer)) for index in range(len(headers))
    ]

    def line(cells: list[str]) -> str:
        # The key reads left-aligned, numbers right-aligned so that their digits line up.
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join((first, *rest)).rstrip()

    rule = "  ".join("-" * width for width in widths)
    lines = [line(headers), rule, *(line(cells) for cells in body), rule, line(footer)]
    if total.unpriced:
        lines.append(
            f"\n{total.unpriced} invocation(s) had no price; cost USD covers the others only."
        )
    if total.provisional:
        lines.append(
            f"\n{total.provisional} invocation(s) ran on workers that may still be running: "
            "their idle time and rounding can still grow."
        )
    return "\n".join(lines)


def _cells(row: ReportRow, columns: Sequence[TableColumn]) -> list[str]:
    cells = [row.key]
    for column in columns:
        value = getattr(row, column.field)
        unknown = value is None or (isinstance(value, float) and math.isnan(value))
        cells.append(_UNKNOWN if unknown else column.format(value))
    return cells
